//! The dashboard rendered into ratatui's `TestBackend` from real samples of prepared queues.

use fleetctl::dash::{Action, Dash, View, render};
use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent},
};

use crate::support::{TestFleet, event};

fn screen(dash: &Dash, now_ms: u64) -> String {
    let mut terminal = Terminal::new(TestBackend::new(130, 30)).unwrap();
    terminal.draw(|f| render(dash, f, now_ms)).unwrap();
    let buffer = terminal.backend().buffer();
    let area = buffer.area;
    let mut text = String::new();
    for y in 0..area.height {
        for x in 0..area.width {
            text.push_str(buffer[(x, y)].symbol());
        }
        text.push('\n');
    }
    text
}

fn key(c: char) -> KeyEvent {
    KeyEvent::from(KeyCode::Char(c))
}

#[tokio::test]
async fn dash_shows_every_queue_with_rates_and_opens_dead_letters() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let mut dash = Dash::new(&t.prefix);
    let first = fleetctl::queues::collect(&t.broker).await.unwrap();
    dash.update(&first, 1_000_000);
    // Ten more entries arrive between two samples one second apart: 10/s in.
    let more: Vec<_> = (20..30)
        .map(|i| (event(i), fleet_core::EnqueueOptions::default()))
        .collect();
    t.inbound.enqueue_batch(&more).await.unwrap();
    let second = fleetctl::queues::collect(&t.broker).await.unwrap();
    dash.update(&second, 1_001_000);
    assert_eq!(dash.panels[0].rates.in_per_s, Some(10.0));
    assert_eq!(
        dash.panels[0]
            .in_history
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [10]
    );

    let text = screen(&dash, 1_001_000);
    assert!(text.contains(&format!("prefix {}", t.prefix)), "{text}");
    let inbound = text.lines().find(|l| l.contains("inbound")).expect(&text);
    let cols: Vec<&str> = inbound
        .split(|c: char| c == '│' || c.is_whitespace())
        .filter(|s| !s.is_empty() && *s != ">")
        .collect();
    // QUEUE HIGH NORMAL LOW PENDING DELAYED DEAD OLDEST IN OUT CONSUMERS STATE
    assert_eq!(
        cols[..7],
        ["inbound", "1", "13", "1", "2", "1", "3"],
        "{inbound}"
    );
    assert_eq!(cols[8], "10/s", "{inbound}");
    assert_eq!(cols[11], "running", "{inbound}");
    assert!(text.contains("outbound"), "{text}");
    assert!(text.contains("inbound in 10/s"), "sparkline title: {text}");
    assert!(text.contains("p pause/resume"), "{text}");

    // Keys: p asks to pause the selected queue; after the pause the same key resumes.
    assert_eq!(dash.on_key(key('p')), Action::Pause("inbound".into()));
    t.inbound.pause().await.unwrap();
    dash.update(
        &fleetctl::queues::collect(&t.broker).await.unwrap(),
        1_002_000,
    );
    assert!(screen(&dash, 1_002_000).contains("paused"));
    assert_eq!(dash.on_key(key('p')), Action::Resume("inbound".into()));
    assert_eq!(dash.on_key(KeyEvent::from(KeyCode::Down)), Action::None);
    assert_eq!(dash.on_key(key('d')), Action::OpenDead("outbound".into()));

    let dead = t.outbound.dead_list(100, None).await.unwrap();
    dash.show_dead("outbound", dead, 1);
    let text = screen(&dash, fleet_queue::now_ms());
    assert!(text.contains("outbound dead letters"), "{text}");
    assert!(
        text.contains("http_4xx") && text.contains("400 bad number"),
        "{text}"
    );
    assert_eq!(dash.on_key(KeyEvent::from(KeyCode::Esc)), Action::None);
    assert_eq!(dash.view, View::Queues);
    assert_eq!(dash.on_key(key('q')), Action::Quit);

    // A failed sample keeps the numbers and says they are stale.
    dash.fail("cannot connect to Redis".into());
    let text = screen(&dash, 1_003_000);
    assert!(text.contains("stale: cannot connect to Redis"), "{text}");
    assert!(text.contains("inbound"));
}

#[test]
fn dash_refuses_to_run_without_a_terminal() {
    let out = crate::support::fleetctl(&["dash"], &["--prefix", "unused"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::support::stderr(&out).contains("needs a terminal"));
}
