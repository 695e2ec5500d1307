//! Every supported form of `#[step]`, called inside and outside a workflow.

use std::collections::HashMap;

use kagzi::{WorkflowContext, step, workflow};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Card {
    number: String,
}

/// Borrowed arguments.
#[step]
async fn charge(card: &Card, cents: u64) -> anyhow::Result<String> {
    Ok(format!("{cents} on {}", card.number))
}

/// Every option; with retries the arguments are cloned per attempt.
#[step(name = "send-email", attempts = 5, backoff = "250ms", max_backoff = "5s", timeout = "1m")]
pub async fn email(to: String, cc: &[String]) -> anyhow::Result<()> {
    let _ = (to, cc);
    Ok(())
}

/// No arguments, `kagzi::Result`, a timeout alone.
#[step(timeout = "2h")]
async fn now() -> kagzi::Result<u64> {
    Ok(0)
}

/// Patterns, `mut`, explicit and anonymous lifetimes.
#[step]
async fn sum<'a>(
    (a, b): (u32, u32),
    mut extra: Vec<u32>,
    names: &'a HashMap<String, u32>,
    label: std::borrow::Cow<'_, str>,
) -> anyhow::Result<u32> {
    extra.push(a + b);
    Ok(extra.iter().sum::<u32>() + names.len() as u32 + label.len() as u32)
}

#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error("declined")]
    Declined,
    #[error(transparent)]
    Kagzi(#[from] kagzi::Error),
}

/// A custom error type that can carry Kagzi's errors.
#[step(attempts = 2)]
async fn refund(card: &Card) -> Result<u64, PaymentError> {
    if card.number.is_empty() {
        return Err(PaymentError::Declined);
    }
    Ok(1)
}

/// Steps in sequence, in `join!`, in `join_all`, with `?`.
#[workflow]
async fn checkout(_ctx: WorkflowContext, card: Card) -> anyhow::Result<String> {
    let receipt = charge(&card, 100).await?;
    let cc = vec!["b@example.com".to_owned()];
    futures::try_join!(email("a@example.com".to_owned(), &cc), email("c".to_owned(), &cc))?;
    let names = HashMap::new();
    let totals =
        futures::future::join_all((0..3).map(|i| sum((i, i), Vec::new(), &names, "x".into())))
            .await;
    for total in totals {
        total?;
    }
    let _ = now().await?;
    match refund(&card).await {
        Err(PaymentError::Declined) => {}
        other => {
            other?;
        }
    }
    Ok(receipt)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Outside a workflow, steps simply run.
    let card = Card { number: "4242".to_owned() };
    assert_eq!(charge(&card, 1).await?, "1 on 4242");
    let _ = checkout;
    Ok(())
}
