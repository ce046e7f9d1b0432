//! The `leadpipe` binary as a person meets it, one test binary (one link, one set of
//! dependencies): each module is one surface of the command line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect;
mod demo;
mod destinations;
mod doctor;
mod forward;
mod operate;
mod person;
mod serve_edges;
mod serve_kill;
mod stages;
mod support;
