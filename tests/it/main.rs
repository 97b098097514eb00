//! One integration-test binary (ripgrep style): each module covers one subsystem against the real
//! stores in temporary directories.

mod engine_props;
mod state;
