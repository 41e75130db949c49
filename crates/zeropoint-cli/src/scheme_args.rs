//! The command-line flags that describe a quantization scheme, shared by subcommands.

use anyhow::Result;
use clap::Args as ClapArgs;
use zeropoint_core::Scheme;

#[derive(ClapArgs, Debug, Clone)]
pub struct SchemeArgs {
    /// Bit-width, 2 to 16.
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// Zero-point fixed at 0 (implies --signed unless --unsigned is given).
    #[arg(long, conflicts_with = "asymmetric")]
    pub symmetric: bool,
    /// Zero-point chosen to use the whole grid (the default; implies --unsigned unless --signed).
    #[arg(long)]
    pub asymmetric: bool,
    /// Signed grid [-2^(b-1), 2^(b-1)-1].
    #[arg(long, conflicts_with = "unsigned")]
    pub signed: bool,
    /// Unsigned grid [0, 2^b-1].
    #[arg(long)]
    pub unsigned: bool,
    /// Narrow (restricted) range: drop the most negative code, e.g. [-127, 127].
    #[arg(long)]
    pub narrow: bool,
    /// Round the scale up to a power of two.
    #[arg(long)]
    pub pow2: bool,
}

impl SchemeArgs {
    /// The scheme these flags describe: asymmetric unsigned unless told otherwise, and signed
    /// when symmetric (the usual weight scheme) unless --unsigned.
    pub fn scheme(&self) -> Result<Scheme> {
        let symmetric = self.symmetric;
        let signed = if self.signed || self.unsigned {
            self.signed
        } else {
            symmetric
        };
        let scheme = Scheme::new(self.bits)
            .signed(signed)
            .symmetric(symmetric)
            .narrow(self.narrow)
            .pow2_scale(self.pow2);
        scheme.validate()?;
        Ok(scheme)
    }
}
