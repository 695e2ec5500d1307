//! The frame around every page: head, navigation, the notice of the last action.

use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

/// The section a page belongs to, highlighted in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    /// Runs and a run's page.
    Runs,
    /// Schedules.
    Schedules,
    /// Workers.
    Workers,
    /// Queues.
    Queues,
    /// The login form and error pages.
    None,
}

/// What the last action said, carried in the redirect after it (`?notice=` or `?problem=`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    /// What the action did.
    pub notice: Option<String>,
    /// Why the action was refused.
    pub problem: Option<String>,
}

impl Flash {
    /// The banner for it, if any.
    pub(crate) fn banner(&self) -> Markup {
        html! {
            @if let Some(notice) = self.notice.as_deref().filter(|n| !n.is_empty()) {
                p.notice role="status" { (notice) }
            }
            @if let Some(problem) = self.problem.as_deref().filter(|n| !n.is_empty()) {
                p.problem role="alert" { (problem) }
            }
        }
    }
}

/// A whole page: `title`, the navigation with `nav` current, and `body`; a logout button when
/// `login` (the server has API keys).
pub(crate) fn page(title: &str, nav: Nav, login: bool, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) aria-current=[(nav == this).then_some("page")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kagzi" }
                link rel="stylesheet" href="/ui/assets/kagzi.css";
                script src="/ui/assets/kagzi.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui" { "Kagzi" }
                    nav {
                        (link("/ui", "Runs", Nav::Runs))
                        (link("/ui/schedules", "Schedules", Nav::Schedules))
                        (link("/ui/workers", "Workers", Nav::Workers))
                        (link("/ui/queues", "Queues", Nav::Queues))
                    }
                    span.spacer {}
                    a href="/docs" { "API" }
                    @if login {
                        form.inline method="post" action="/ui/logout" {
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}
