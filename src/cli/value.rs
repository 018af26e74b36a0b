//! Reading a token value for `create`: from a file, from standard input, or
//! from a no-echo prompt on the terminal. Never from the command line, where
//! `ps` and shell history would see it.

use std::{
    io::{IsTerminal, Read},
    path::Path,
};

use zeroize::Zeroizing;

use super::report::CliError;
use crate::tokens::rules::MAX_VALUE_BYTES;

/// Reads the value: from `file` (`-` means standard input), else from a
/// hidden prompt when standard input is a terminal, else from standard input.
/// One trailing newline (`\n` or `\r\n`) is removed.
pub fn read(file: Option<&Path>, name: &str) -> Result<Zeroizing<String>, CliError> {
    let mut value = match file {
        Some(path) if path != Path::new("-") => {
            let bytes = Zeroizing::new(
                std::fs::read(path)
                    .map_err(|e| CliError::Local(format!("value file {}: {e}", path.display())))?,
            );
            utf8(bytes)?
        }
        _ if file.is_none() && std::io::stdin().is_terminal() => Zeroizing::new(
            rpassword::prompt_password(format!("Value of {name} (input hidden): ")).map_err(
                |e| CliError::Local(format!("reading the value from the terminal: {e}")),
            )?,
        ),
        _ => {
            let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_VALUE_BYTES + 64));
            // Read one byte past the limit so that an oversized value is
            // refused here rather than buffered whole.
            std::io::stdin()
                .lock()
                .take(MAX_VALUE_BYTES as u64 + 3)
                .read_to_end(&mut bytes)
                .map_err(|e| CliError::Local(format!("reading the value from stdin: {e}")))?;
            utf8(bytes)?
        }
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(CliError::Usage(
            "value: empty; pipe it on stdin, pass --value-file FILE, or type it at the prompt"
                .into(),
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(CliError::Usage(format!(
            "value: longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(value)
}

fn utf8(mut bytes: Zeroizing<Vec<u8>>) -> Result<Zeroizing<String>, CliError> {
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            // Take the bytes back so that they are zeroized too.
            *bytes = e.into_bytes();
            Err(CliError::Usage("value: not valid UTF-8".into()))
        }
    }
}
