//! Typo suggestions by edit distance.

/// Returns the candidate closest to `word`, or `None` when no candidate is
/// close enough to be a likely typo of it.
///
/// Distance is the Levenshtein distance in which swapping two adjacent
/// characters also counts as one edit (optimal string alignment), compared
/// case-insensitively. A candidate qualifies when its distance is at most a
/// third of the word's length, clamped to 1..=3 edits. A word of one
/// character only matches itself. Among equally close candidates the first one wins.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = typo_limit(word);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Returns the candidates ordered by edit distance to `word`, nearest first.
/// Equally distant candidates keep their order.
pub fn by_distance<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ranked: Vec<(usize, &'a str)> = candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .collect();
    ranked.sort_by_key(|(distance, _)| *distance);
    ranked.into_iter().map(|(_, candidate)| candidate).collect()
}

/// Maximum number of candidates that [`suggestion`] lists.
const LISTED: usize = 10;

/// Returns a hint for a name that is not among `candidates`: the nearest
/// candidate as a likely typo, then the candidates nearest first, at most
/// ten, under `listed_as` (such as "defined upstreams"). For example
/// "did you mean `eu`? Defined upstreams: `eu`, `us`".
pub fn suggestion(word: &str, candidates: &[&str], listed_as: &str) -> String {
    if candidates.is_empty() {
        return format!("there are no {listed_as}");
    }
    let ranked = by_distance(word, candidates.iter().copied());
    let mut listed: Vec<String> = ranked
        .iter()
        .take(LISTED)
        .map(|name| format!("`{name}`"))
        .collect();
    if ranked.len() > LISTED {
        listed.push(format!("and {} more", ranked.len() - LISTED));
    }
    let listed = listed.join(", ");
    match nearest(word, candidates.iter().copied()) {
        Some(near) => {
            let mut label = listed_as.chars();
            let label: String = label
                .next()
                .map(|first| first.to_uppercase().chain(label).collect())
                .unwrap_or_default();
            format!("did you mean `{near}`? {label}: {listed}")
        }
        None => format!("{listed_as}: {listed}"),
    }
}

/// Returns the optimal string alignment distance between `a` and `b`, ignoring
/// ASCII and Unicode case.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();

    // Three rows of the dynamic-programming matrix: two rows back are needed
    // for transpositions.
    let mut before_previous = vec![0usize; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0usize; b.len() + 1];

    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before_previous[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before_previous, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

fn typo_limit(word: &str) -> usize {
    match word.chars().count() {
        0 | 1 => 0,
        length => (length / 3).clamp(1, 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("listn", "listen"), 1);
        assert_eq!(edit_distance("listne", "listen"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("GET", "get"), 0);
    }

    #[test]
    fn nearest_finds_typos() {
        let keys = ["listen", "worker_threads", "idle_timeout"];
        assert_eq!(nearest("listne", keys), Some("listen"));
        assert_eq!(nearest("worker_thread", keys), Some("worker_threads"));
        assert_eq!(nearest("idle_timout", keys), Some("idle_timeout"));
    }

    #[test]
    fn nearest_ignores_distant_words() {
        let keys = ["listen", "worker_threads"];
        assert_eq!(nearest("upstream", keys), None);
        assert_eq!(nearest("x", ["y"]), None);
        assert_eq!(nearest("", keys), None);
    }

    #[test]
    fn suggestion_names_typo_and_list() {
        let names = ["web", "api", "apis"];
        assert_eq!(
            suggestion("apo", &names, "defined upstreams"),
            "did you mean `api`? Defined upstreams: `api`, `apis`, `web`"
        );
        assert_eq!(
            suggestion("backend", &names, "defined upstreams"),
            "defined upstreams: `web`, `api`, `apis`"
        );
        assert_eq!(
            suggestion("x", &[], "defined key tables"),
            "there are no defined key tables"
        );
        let many: Vec<String> = (0..12).map(|index| format!("u{index:02}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(suggestion("zzzz", &many, "defined upstreams").ends_with("`u09`, and 2 more"));
    }

    #[test]
    fn nearest_prefers_first_of_equals() {
        assert_eq!(nearest("cat", ["bat", "hat"]), Some("bat"));
    }

    #[test]
    fn by_distance_orders_nearest_first() {
        let names = ["web", "api", "apis", "backend"];
        assert_eq!(
            by_distance("apii", names),
            vec!["api", "apis", "web", "backend"]
        );
    }
}
