//! Helpers shared by signing and re-dealing. (Enrollment of a share by
//! FROST's repairable threshold scheme was replaced by re-dealing, which
//! also moves the threshold with the holder count: see [`crate::redeal`].)

use super::*;

impl Keys {
    pub(crate) fn valid_share(&self) -> Result<Arc<KeyShare>, Refusal> {
        match &*read(&self.share) {
            ShareState::Valid(s) => Ok(s.clone()),
            ShareState::Invalid(why) => {
                Err(refusal!("this node's share failed verification: {why}"))
            }
            ShareState::None => Err(Refusal::new(
                RefusalCode::NotReady,
                "this node holds no share",
            )),
        }
    }
}
