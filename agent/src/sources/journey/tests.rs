//! Unit tests of the journey pieces that need no hub.
