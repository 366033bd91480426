//! Not written yet (issue 3): enabling the `vault` feature does not build until it is.
