//! What [`crate::quantize`] reads: a header (metadata and tensor infos in ggml's terms) and each
//! tensor's bytes in the type the header gives it. A GGUF file is one such input; a Hugging Face
//! checkpoint ([`crate::hf`]) is the other.

use std::borrow::Cow;
use std::path::Path;

use crate::error::Result;
use crate::read::{GgufFile, Header};

pub trait Input {
    /// The file or folder that errors name.
    fn path(&self) -> &Path;
    fn header(&self) -> &Header;
    /// Tensor `i`'s bytes, `header().tensors[i].byte_size()` of them.
    fn data(&self, i: usize) -> Result<Cow<'_, [u8]>>;
}

impl Input for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn header(&self) -> &Header {
        &self.header
    }

    fn data(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(GgufFile::data(self, i)))
    }
}
