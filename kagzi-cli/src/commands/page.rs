//! Following a list route's cursors: as many pages as it takes to show what was asked for.

use crate::error::Result;

/// The largest page a list route serves.
pub(crate) const MAX_PAGE: u32 = 1_000;

/// How many items to collect, and how many to ask for at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pages {
    /// At most this many items; all of them when `None`.
    pub(crate) most: Option<usize>,
    /// Items per request (1 to [`MAX_PAGE`]).
    pub(crate) size: u32,
}

/// Items from successive pages that `fetch` gets (from a cursor, at most a number of
/// items), until there are as many as `pages` says. Returns the items and the cursor to go
/// on from, `None` once there is nothing more.
///
/// # Errors
/// The first error `fetch` returns.
pub(crate) async fn collect<T, C>(
    pages: Pages,
    mut fetch: impl AsyncFnMut(Option<C>, u32) -> Result<(Vec<T>, Option<C>)>,
) -> Result<(Vec<T>, Option<C>)> {
    let size = pages.size.clamp(1, MAX_PAGE);
    let mut items = Vec::new();
    let mut cursor = None;
    loop {
        let want = pages.most.map_or(size, |most| {
            u32::try_from(most.saturating_sub(items.len())).map_or(size, |left| left.min(size))
        });
        let (page, next) = fetch(cursor, want).await?;
        let empty = page.is_empty();
        items.extend(page);
        cursor = next;
        // An empty page with a cursor would loop forever; a server never sends one.
        if cursor.is_none() || empty || pages.most.is_some_and(|most| items.len() >= most) {
            return Ok((items, cursor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of the numbers below `total`, largest first, `limit` at a time from `cursor`.
    async fn serve(total: u32, cursor: Option<u32>, limit: u32) -> Result<(Vec<u32>, Option<u32>)> {
        let start = cursor.unwrap_or(total);
        let items: Vec<u32> = (0..start).rev().take(limit as usize).collect();
        let next = items.last().copied().filter(|&last| last > 0);
        Ok((items, next))
    }

    #[tokio::test]
    async fn pages_are_followed_up_to_the_limit() -> Result<()> {
        let mut calls = Vec::new();
        let pages = Pages {
            most: Some(2_500),
            size: MAX_PAGE,
        };
        let (items, next) = collect(pages, async |cursor, limit| {
            calls.push(limit);
            serve(3_000, cursor, limit).await
        })
        .await?;
        assert_eq!(items.len(), 2_500);
        assert_eq!(calls, [1_000, 1_000, 500]);
        assert_eq!(next, Some(500), "more remain");
        let all = Pages {
            most: None,
            size: 400,
        };
        let (items, next) =
            collect(all, async |cursor, limit| serve(1_500, cursor, limit).await).await?;
        assert_eq!((items.len(), next), (1_500, None));
        Ok(())
    }
}
