//! The node's whole route table and router: the API (`crate::http`) and
//! the pages (`crate::ui`), joined here so that neither imports the other
//! for it. Tests that walk every route use [`routes`].

use axum::Router;

use crate::http::{Route, Shared};

/// Every route: the API's, then the pages'.
pub fn routes() -> Vec<Route> {
    let mut all = crate::http::routes();
    all.extend(crate::ui::routes());
    all
}

/// The router of [`routes`]; a refused page request gets the login form.
pub fn router(state: Shared) -> Router {
    crate::http::router_of(routes(), state, crate::ui::admin::login_required)
}
