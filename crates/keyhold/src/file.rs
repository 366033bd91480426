//! Files and byte streams of any size, in constant memory, in the Keyhold stream format.
//!
//! The encrypted stream carries its tenant id and EDEK in its header, so decrypting needs only
//! the stream and a proxy. Decrypting to a file writes a temporary file beside the target and
//! renames it only once the whole stream has authenticated: a truncated or altered input never
//! leaves partial plaintext at the target path.

use std::path::Path;

use keyhold_core::metadata::RequestMetadata;
use keyhold_core::stream::{
    DEFAULT_SEGMENT_SIZE, HeaderParse, StreamDecryptor, StreamEncryptor, StreamError, StreamHeader,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::Edek;
use crate::client::Client;
use crate::error::{Error, Result};

const READ_CHUNK: usize = 256 * 1024;

fn stream_error(operation: &'static str) -> impl Fn(StreamError) -> Error {
    move |source| Error::Stream { operation, source }
}

/// What an encrypted stream's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The tenant the stream belongs to.
    pub tenant_id: String,
    /// The EDEK of its data key.
    pub edek: Edek,
}

impl Client {
    /// Encrypts everything `reader` yields into `writer` under a new data key of
    /// `meta.tenant_id`. Returns the EDEK (also stored in the stream's header).
    pub async fn encrypt_stream<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        meta: &RequestMetadata,
    ) -> Result<Edek>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let key = self.wrap_key(meta).await?;
        let edek_bytes = Edek::from(key.edek.clone()).to_bytes()?;
        let (mut encryptor, header) =
            StreamEncryptor::new(&key.dek, &meta.tenant_id, &edek_bytes, DEFAULT_SEGMENT_SIZE)
                .map_err(stream_error("encrypt"))?;
        drop(key.dek);
        writer.write_all(&header).await?;
        let mut input = vec![0u8; READ_CHUNK];
        let mut output = Vec::with_capacity(READ_CHUNK + 4096);
        loop {
            let n = reader.read(&mut input).await?;
            if n == 0 {
                break;
            }
            output.clear();
            encryptor
                .update(input.get(..n).unwrap_or_default(), &mut output)
                .map_err(stream_error("encrypt"))?;
            writer.write_all(&output).await?;
        }
        output.clear();
        encryptor.finish(&mut output).map_err(stream_error("encrypt"))?;
        writer.write_all(&output).await?;
        writer.flush().await?;
        Ok(Edek::from(key.edek))
    }

    /// Decrypts a stream made by [`encrypt_stream`](Self::encrypt_stream) into `writer`.
    ///
    /// `meta.tenant_id` must match the stream's tenant. Plaintext is written segment by segment
    /// as each authenticates; only an `Ok` return proves the stream was complete — on error,
    /// discard what was written (or use [`decrypt_file`](Self::decrypt_file)).
    pub async fn decrypt_stream<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        meta: &RequestMetadata,
    ) -> Result<StreamInfo>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buffer = Vec::with_capacity(4096);
        let (header, used) = loop {
            match StreamHeader::parse(&buffer).map_err(stream_error("decrypt"))? {
                HeaderParse::Complete(header, used) => break (header, used),
                HeaderParse::NeedMore(n) => {
                    let start = buffer.len();
                    buffer.resize(n, 0);
                    let got = reader.read(buffer.get_mut(start..).unwrap_or_default()).await?;
                    buffer.truncate(start + got);
                    if got == 0 {
                        return Err(Error::Stream {
                            operation: "decrypt",
                            source: StreamError::Truncated,
                        });
                    }
                }
            }
        };
        if header.tenant_id != meta.tenant_id {
            return Err(Error::Stream {
                operation: "decrypt",
                source: StreamError::TenantMismatch,
            });
        }
        let edek = Edek::from_bytes(&header.edek);
        let dek = self.unwrap_key(&edek, meta).await?;
        let mut decryptor = StreamDecryptor::new(&dek, &header, Some(&meta.tenant_id))
            .map_err(stream_error("decrypt"))?;
        drop(dek);
        let mut output = Vec::with_capacity(READ_CHUNK + 4096);
        decryptor
            .update(buffer.get(used..).unwrap_or_default(), &mut output)
            .map_err(stream_error("decrypt"))?;
        writer.write_all(&output).await?;
        let mut input = vec![0u8; READ_CHUNK];
        loop {
            let n = reader.read(&mut input).await?;
            if n == 0 {
                break;
            }
            output.clear();
            decryptor
                .update(input.get(..n).unwrap_or_default(), &mut output)
                .map_err(stream_error("decrypt"))?;
            writer.write_all(&output).await?;
        }
        output.clear();
        decryptor.finish(&mut output).map_err(stream_error("decrypt"))?;
        writer.write_all(&output).await?;
        writer.flush().await?;
        Ok(StreamInfo { tenant_id: header.tenant_id, edek })
    }

    /// Encrypts the file `input` to `output`.
    pub async fn encrypt_file(
        &self,
        input: &Path,
        output: &Path,
        meta: &RequestMetadata,
    ) -> Result<Edek> {
        let reader = tokio::fs::File::open(input).await?;
        let (tmp, writer) = create_temp_beside(output).await?;
        let result = self.encrypt_stream(reader, tokio::io::BufWriter::new(writer), meta).await;
        finish_temp(result, &tmp, output).await
    }

    /// Decrypts the file `input` to `output`; `output` appears only if the whole file
    /// authenticated.
    pub async fn decrypt_file(
        &self,
        input: &Path,
        output: &Path,
        meta: &RequestMetadata,
    ) -> Result<StreamInfo> {
        let reader = tokio::fs::File::open(input).await?;
        let (tmp, writer) = create_temp_beside(output).await?;
        let result = self.decrypt_stream(reader, tokio::io::BufWriter::new(writer), meta).await;
        finish_temp(result, &tmp, output).await
    }
}

/// Reads the tenant id and EDEK from the start of an encrypted file, without decrypting.
pub async fn read_stream_info(input: &Path) -> Result<StreamInfo> {
    let mut file = tokio::fs::File::open(input).await?;
    let mut buffer = Vec::new();
    loop {
        match StreamHeader::parse(&buffer).map_err(stream_error("decrypt"))? {
            HeaderParse::Complete(header, _) => {
                return Ok(StreamInfo {
                    tenant_id: header.tenant_id,
                    edek: Edek::from_bytes(&header.edek),
                });
            }
            HeaderParse::NeedMore(n) => {
                let start = buffer.len();
                buffer.resize(n, 0);
                file.read_exact(buffer.get_mut(start..).unwrap_or_default()).await.map_err(
                    |e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            Error::Stream { operation: "decrypt", source: StreamError::Truncated }
                        } else {
                            Error::Io(e)
                        }
                    },
                )?;
            }
        }
    }
}

async fn create_temp_beside(target: &Path) -> Result<(std::path::PathBuf, tokio::fs::File)> {
    let name = target.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!("{} is not a file path", target.display()))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".keyhold-{}.tmp", std::process::id()));
    let tmp = target.with_file_name(tmp_name);
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let file = options.open(&tmp).await?;
    Ok((tmp, file))
}

async fn finish_temp<T>(result: Result<T>, tmp: &Path, target: &Path) -> Result<T> {
    match result {
        Ok(value) => {
            tokio::fs::rename(tmp, target).await?;
            Ok(value)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(tmp).await;
            Err(e)
        }
    }
}
