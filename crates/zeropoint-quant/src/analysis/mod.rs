//! The analysis behind `zeropoint explain`, `inspect` and `graph`, for library users as much as
//! for the command: what a quantizer does to a range or to data, what each scheme and range
//! estimator would cost a tensor, and what a model is made of.

pub mod explain;
pub mod inspect;
pub mod model;
pub mod ranges;
