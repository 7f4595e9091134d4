//! Unit tests of remote write out.
