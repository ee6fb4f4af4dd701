//! placeholder: written by the frame/config helper
