//! Table tests for the engine: rule combination, flapping guard, cooldowns, steps, missing
//! data, target tracking, profile selection across time zones and DST, the condition grammar,
//! validation, and the simulator (including its equivalence with a live-style loop).

mod condition;
mod evaluate;
mod fixtures;
mod schedule;
mod simulate;
mod validate;
