//! Benchmarks that compare vhostkit's daemons with their peers side by side.
//!
//! Every benchmark produces a [`report::Report`]: rows of one workload each, with
//! one [`report::Measurement`] per backend measured in the same run, printed as a
//! table, and optionally written as JSON and as an SVG bar chart of the ratios.

pub mod noise;
pub mod procs;
pub mod report;
pub mod setup;
