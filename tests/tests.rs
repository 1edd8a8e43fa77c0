//! The integration tests, one crate (as ripgrep lays them out): `util` runs the real `tpprof`
//! binary under `mpirun -n 1/2/4` (and as a singleton) against the mock adapter and the cpu engine;
//! `json` mirrors the result JSON with types that refuse unknown fields; `schema` keeps
//! results/schema.json the types' schema and true of the committed results; one module per topic.
//! The assertions are counts, statuses and invariants, never exact timings: the mock's scripted
//! delays are lower bounds a measurement must not undercut, with loose upper bounds for a loaded
//! machine.

mod json;
mod util;

mod checkpoint;
mod doctor;
mod engines;
mod failures;
mod help;
mod html;
mod measure;
mod multihost;
mod reports;
mod schema;
mod warmup;
