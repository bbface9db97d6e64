//! The backend-neutral conformance suite: the storage interface's rules as
//! tests that any backend must pass. Placeholder; filled in below.
