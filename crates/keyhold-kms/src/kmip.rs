//! Not written yet (issue 3): enabling the `kmip` feature does not build until it is.
