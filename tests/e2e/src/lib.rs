//! The end-to-end proof lives in `tests/aws_path.rs`; this crate has no library code.
