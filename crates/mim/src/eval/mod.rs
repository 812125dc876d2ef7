//! What a trained encoder is worth: linear probe and k-NN on frozen features
//! ([`probe`]), a classifier's accuracy ([`accuracy`]), and where the encoder
//! looks ([`attention`]: attention maps and rollout).

pub mod accuracy;
pub mod attention;
pub mod probe;
