//! clip-cluster: streaming face clustering by identity.
