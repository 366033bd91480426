//! Not written yet (issue 3): enabling the `gcp` feature does not build until it is.
