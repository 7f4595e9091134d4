//! Unit tests of /federate.
