// Seals with the web page's seal.js from the command line, for the Rust interop test
// (crates/keyhold-core/tests/seal_interop_js.rs):
//   node seal-cli.mjs <fleet public key, base64> <kms|siem> <tenant id> <plaintext>
// prints the blob on stdout; on an error prints it on stderr and exits with 1.
import { seal } from '../seal.js';

const args = process.argv.slice(2);
if (args.length !== 4) {
  console.error('usage: node seal-cli.mjs <public key base64> <kms|siem> <tenant id> <plaintext>');
  process.exit(2);
}
try {
  const [publicKey, purpose, tenantId, plaintext] = args;
  process.stdout.write(`${await seal(publicKey, purpose, tenantId, plaintext)}\n`);
} catch (error) {
  console.error(`seal-cli: ${error.message}`);
  process.exit(1);
}
