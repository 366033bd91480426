//! Not written yet (issue 3): enabling the `aws` feature does not build until it is.
