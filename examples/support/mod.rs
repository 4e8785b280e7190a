//! Code shared by the examples and by `tests/examples/`, which runs their cores.
#![allow(dead_code)] // each program uses a part of it

pub mod backend;
pub mod options;
pub mod program;
