//! Helpers shared by the end-to-end tests (added with the daemons they drive).
