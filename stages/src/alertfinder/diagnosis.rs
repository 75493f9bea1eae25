//! The diagnosis parameters: a fixed, ordered, named feature vector per analysed star.

use super::StarResult;

pub const N_DIAGNOSIS: usize = 0;
pub const DIAGNOSIS_NAMES: &[&str] = &[];

pub fn diagnosis_vector(_r: &StarResult) -> [f64; N_DIAGNOSIS] {
    []
}
