//! Gradient-check cases of the groupnorm ops (their parity cases are still with the family they were written with).

use crate::parity::{Case, Work};

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    vec![]
}
