//! Not written yet (issue 3): enabling the `azure` feature does not build until it is.
