//! clip-cluster: streaming face clustering by identity.

pub mod baselines;
pub mod features;
pub mod knn;
pub mod metrics;
