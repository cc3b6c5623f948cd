//! The InstaGen stages. For now: the engine self-check that `instagen selfcheck` runs.

pub mod selfcheck;
