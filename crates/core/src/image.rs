//! placeholder: connection image (helper H6)
