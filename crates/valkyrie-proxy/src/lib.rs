//! The data plane: downstream listeners, HTTP/1.1 and HTTP/2 proxying,
//! upstream connection pools and load balancing.
