//! machat's wire protocol: the rules for names, rooms and lines, the renderings of every event
//! in both formats (MaChat text and JSON), and the codecs that read a handshake and lines from
//! a byte stream. No tokio and no I/O: the server, the client and the fuzz targets share it,
//! and the fuzz targets build nothing else.

pub mod act;
pub mod codec;
pub mod frame;
pub mod message;
pub mod protocol;
pub mod refusal;
pub mod request;
pub mod sniff;
