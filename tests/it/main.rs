//! One integration-test binary (ripgrep style): each module covers one subsystem against the real
//! stores in temporary directories and real librdkafka against its mock cluster.

mod api;
mod cdp;
mod clip;
mod commands;
mod crash;
mod daemon;
mod dashboards;
mod dead_letters;
mod detector;
mod domains;
mod engine_props;
mod erase;
mod feedback;
mod layout;
mod listing;
mod locate;
mod logs;
mod prep;
mod recluster;
mod resnet;
mod state;
mod support;
mod ui;
