//! What a trained encoder is worth: linear probe and k-NN on frozen features
//! ([`probe`]), and a classifier's accuracy ([`accuracy`]).

pub mod accuracy;
pub mod probe;
