//! Not written yet (issue 3): enabling the `pkcs11` feature does not build until it is.
