//! `lensnet evaluate`'s science: the labels of a survey team's archive (`labels.csv`), what the
//! replays flagged per star, and the figures by survey (events) and by variable type (everything
//! else): found in the season of the peak, found before the peak, days before the peak, flagged
//! "yes" or "maybe". Rendering as Markdown and JSON lives here too; the command does the I/O.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::replay::StarHistory;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("line {line} of {path}: {reason}")]
    Label { path: String, line: usize, reason: String },
}

/// One labelled star.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    pub star: String,
    /// `event`, `binary_event` or `nonevent`.
    pub class: String,
    /// Variable type (`dwarf_nova`, `mira`, ...) or `event`.
    pub kind: String,
    pub survey: String,
    /// HJD - 2450000 of the peak, for events.
    pub peak_hjd: Option<f64>,
    /// Line of the label file (for messages).
    #[serde(skip)]
    pub line: usize,
}

impl Label {
    pub fn is_event(&self) -> bool {
        self.class == "event" || self.class == "binary_event"
    }
}

/// Reads `labels.csv`: a header naming at least `star` and `class`; `type`, `survey` and
/// `peak_hjd` are used when present. Every problem names its line.
pub fn read_labels(path: &Path) -> Result<Vec<Label>, EvalError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: p.clone(), source })?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(EvalError::Label { path: p, line: 1, reason: "the file is empty (expected a header: star,class,type,survey,...,peak_hjd)".into() });
    };
    let cols: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let at = |name: &str| cols.iter().position(|c| c == name);
    let (Some(star_at), Some(class_at)) = (at("star"), at("class")) else {
        return Err(EvalError::Label { path: p, line: 1, reason: format!("the header `{header}` has no `star` and `class` columns") });
    };
    let (type_at, survey_at, peak_at) = (at("type"), at("survey"), at("peak_hjd"));
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |reason: String| EvalError::Label { path: p.clone(), line: i + 1, reason };
        let get = |k: Option<usize>| k.and_then(|k| f.get(k).copied()).unwrap_or("");
        let star = get(Some(star_at));
        if star.is_empty() {
            return Err(bad("no star".into()));
        }
        let class = get(Some(class_at)).to_string();
        if !["event", "binary_event", "nonevent"].contains(&class.as_str()) {
            return Err(bad(format!("class `{class}` is not event, binary_event or nonevent")));
        }
        let peak = match get(peak_at) {
            "" => None,
            v => Some(v.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| bad(format!("peak_hjd `{v}` is not a number")))?),
        };
        if let Some(prev) = seen.insert(star.to_string(), i + 1) {
            return Err(bad(format!("star {star} is labelled twice (also line {prev})")));
        }
        let kind = match get(type_at) {
            "" => class.clone(),
            t => t.to_string(),
        };
        out.push(Label { star: star.to_string(), class, kind, survey: get(survey_at).to_string(), peak_hjd: peak, line: i + 1 });
    }
    Ok(out)
}

/// The fixed halves of a labelled archive, by star: a model is trained and tuned on the
/// training half and reported on the validation half, never the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Half {
    Training,
    Validation,
}

impl std::str::FromStr for Half {
    type Err = String;
    fn from_str(s: &str) -> Result<Half, String> {
        match s {
            "training" => Ok(Half::Training),
            "validation" => Ok(Half::Validation),
            o => Err(format!("`{o}` is not a half (training or validation)")),
        }
    }
}

/// The half a star belongs to: the lowest bit of the first byte of sha256("lensnet split " +
/// star id). Fixed for ever (it depends on the id alone), about half of any set, and the same in
/// Python (`hashlib.sha256(b"lensnet split " + star.encode()).digest()[0] & 1`).
pub fn half_of(star: &str) -> Half {
    use sha2::{Digest, Sha256};
    if Sha256::digest(format!("lensnet split {star}").as_bytes())[0] & 1 == 0 { Half::Training } else { Half::Validation }
}

/// What the replays flagged for one star, over all its seasons.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// First "yes" as-of time in each season replayed.
    pub first_yes: BTreeMap<i32, f64>,
    /// First "yes" or "maybe" as-of time in each season.
    pub first_kept: BTreeMap<i32, f64>,
}

/// Per-star outcomes from the histories of the replays, keyed by star id.
pub fn outcomes(replays: &[(i32, Vec<StarHistory>)]) -> HashMap<String, Outcome> {
    let mut out: HashMap<String, Outcome> = HashMap::new();
    for (season, stars) in replays {
        for s in stars {
            let o = out.entry(s.star_id.clone()).or_default();
            if let Some(t) = s.first_yes {
                let e = o.first_yes.entry(*season).or_insert(t);
                *e = e.min(t);
            }
            if let Some(t) = s.first_kept {
                let e = o.first_kept.entry(*season).or_insert(t);
                *e = e.min(t);
            }
        }
    }
    out
}

/// Events of one group (a survey).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventRow {
    pub group: String,
    pub n: usize,
    /// A "yes" in the season of the peak.
    pub found: usize,
    /// ... at an as-of time before the peak.
    pub before_peak: usize,
    /// Median of (peak - first "yes") over the events found in their peak's season, days.
    pub median_days_before_peak: Option<f64>,
    /// "yes" or "maybe" in the season of the peak.
    pub kept: usize,
}

/// Non-events of one group (a variable type).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NonEventRow {
    pub group: String,
    pub n: usize,
    /// Flagged "yes" in any season.
    pub yes: usize,
    /// Flagged "maybe" (and never "yes") in any season.
    pub maybe: usize,
}

/// The evaluation's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evaluation {
    pub model_sha256: String,
    pub events: Vec<EventRow>,
    pub events_total: EventRow,
    pub nonevents: Vec<NonEventRow>,
    pub nonevents_total: NonEventRow,
    /// Labelled events without a peak time (not counted in the event figures).
    pub events_without_peak: usize,
    /// (season, field) pairs replayed.
    pub replays: Vec<(i32, String)>,
    /// Days between replay steps.
    pub step_days: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) })
}

/// The figures from the labels and what was flagged. `season_of` maps a peak time to its season.
pub fn evaluate(labels: &[Label], flagged: &HashMap<String, Outcome>, season_of: impl Fn(f64) -> i32, model_sha256: &str, replays: Vec<(i32, String)>) -> Evaluation {
    let none = Outcome::default();
    let mut events: BTreeMap<String, (EventRow, Vec<f64>)> = BTreeMap::new();
    let mut all_leads = Vec::new();
    let mut total = EventRow { group: "all survey events".into(), ..Default::default() };
    let mut without_peak = 0;
    let mut nonevents: BTreeMap<String, NonEventRow> = BTreeMap::new();
    let mut ntotal = NonEventRow { group: "all non-events".into(), ..Default::default() };
    for l in labels {
        let o = flagged.get(&l.star).unwrap_or(&none);
        if l.is_event() {
            let Some(peak) = l.peak_hjd else {
                without_peak += 1;
                continue;
            };
            let season = season_of(peak);
            let (row, leads) = events.entry(l.survey.clone()).or_insert_with(|| (EventRow { group: l.survey.clone(), ..Default::default() }, Vec::new()));
            row.n += 1;
            total.n += 1;
            if let Some(&t) = o.first_yes.get(&season) {
                row.found += 1;
                total.found += 1;
                leads.push(peak - t);
                all_leads.push(peak - t);
                if t < peak {
                    row.before_peak += 1;
                    total.before_peak += 1;
                }
            }
            if o.first_kept.contains_key(&season) {
                row.kept += 1;
                total.kept += 1;
            }
        } else {
            let row = nonevents.entry(l.kind.clone()).or_insert_with(|| NonEventRow { group: l.kind.clone(), ..Default::default() });
            row.n += 1;
            ntotal.n += 1;
            if !o.first_yes.is_empty() {
                row.yes += 1;
                ntotal.yes += 1;
            } else if !o.first_kept.is_empty() {
                row.maybe += 1;
                ntotal.maybe += 1;
            }
        }
    }
    total.median_days_before_peak = median(all_leads);
    Evaluation {
        model_sha256: model_sha256.to_string(),
        events: events.into_values().map(|(mut r, leads)| {
            r.median_days_before_peak = median(leads);
            r
        }).collect(),
        events_total: total,
        nonevents: nonevents.into_values().collect(),
        nonevents_total: ntotal,
        events_without_peak: without_peak,
        replays,
        step_days: 1.0,
    }
}

fn pct(k: usize, n: usize) -> String {
    if n == 0 { "-".into() } else { format!("{:.1} %", 100.0 * k as f64 / n as f64) }
}

/// The figures as Markdown tables (also what the command prints).
pub fn to_markdown(e: &Evaluation) -> String {
    let mut s = String::new();
    s.push_str(&format!("# lensnet evaluate (model {})\n\n", &e.model_sha256[..12.min(e.model_sha256.len())]));
    s.push_str(&format!("{} (season, field) replays, a step every {} day(s), as if live.\n\n", e.replays.len(), e.step_days));
    s.push_str("| survey events | n | found in the season of the peak | before the peak | median days before the peak | yes or maybe |\n| --- | --- | --- | --- | --- | --- |\n");
    for r in e.events.iter().chain(std::iter::once(&e.events_total)) {
        s.push_str(&format!(
            "| {} | {} | {} ({}) | {} ({}) | {} | {} ({}) |\n",
            r.group,
            r.n,
            r.found,
            pct(r.found, r.n),
            r.before_peak,
            pct(r.before_peak, r.n),
            r.median_days_before_peak.map(|d| format!("{d:.1}")).unwrap_or_else(|| "-".into()),
            r.kept,
            pct(r.kept, r.n)
        ));
    }
    if e.events_without_peak > 0 {
        s.push_str(&format!("\n{} labelled event(s) have no peak_hjd and are not counted.\n", e.events_without_peak));
    }
    s.push_str("\n| non-events by type | n | flagged yes | flagged maybe (never yes) |\n| --- | --- | --- | --- |\n");
    for r in e.nonevents.iter().chain(std::iter::once(&e.nonevents_total)) {
        s.push_str(&format!("| {} | {} | {} ({}) | {} ({}) |\n", r.group, r.n, r.yes, pct(r.yes, r.n), r.maybe, pct(r.maybe, r.n)));
    }
    s
}

/// One grouped bar chart (fractions in percent) as PNG: a bar per series and group.
fn bar_chart(path: &Path, title: &str, groups: &[String], series: &[(&str, Vec<f64>, plotters::style::RGBColor)]) -> Result<(), String> {
    use plotters::prelude::*;
    crate::plot::font_ready()?;
    let width = (220 + 125 * groups.len() as u32).clamp(640, 3600);
    let root = BitMapBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = groups.len().max(1);
    let k = series.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..100f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(11)
        .light_line_style(WHITE)
        .y_desc("% of the group")
        .draw()
        .map_err(|e| e.to_string())?;
    // The group names under their bars (plotters places axis labels itself, not per group).
    for (i, g) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let style = TextStyle::from(("sans-serif", if groups.len() > 8 { 12 } else { 14 }).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
        root.draw(&Text::new(g.clone(), (px, py + 8), style)).map_err(|e| e.to_string())?;
    }
    for (j, (name, values, color)) in series.iter().enumerate() {
        let c = *color;
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let x0 = i as f64 + 0.1 + 0.8 * j as f64 / k;
                Rectangle::new([(x0, 0.0), (x0 + 0.8 / k, *v)], c.filled())
            }))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// The two figures: events by survey (found in the peak season, before the peak) and
/// non-events by type (flagged yes, maybe). Returns the files written.
pub fn write_plots(e: &Evaluation, dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    use plotters::style::RGBColor;
    let frac = |k: usize, n: usize| if n == 0 { 0.0 } else { 100.0 * k as f64 / n as f64 };
    let rows: Vec<&EventRow> = e.events.iter().chain(std::iter::once(&e.events_total)).collect();
    let events = dir.join("events.png");
    bar_chart(
        &events,
        "Events: found in the season of their peak",
        &rows.iter().map(|r| format!("{} ({})", r.group, r.n)).collect::<Vec<_>>(),
        &[
            ("found (yes)", rows.iter().map(|r| frac(r.found, r.n)).collect(), RGBColor(31, 119, 180)),
            ("before the peak", rows.iter().map(|r| frac(r.before_peak, r.n)).collect(), RGBColor(44, 160, 44)),
        ],
    )?;
    let rows: Vec<&NonEventRow> = e.nonevents.iter().chain(std::iter::once(&e.nonevents_total)).collect();
    let nonevents = dir.join("nonevents.png");
    bar_chart(
        &nonevents,
        "Non-events flagged by the model",
        &rows.iter().map(|r| format!("{} ({})", r.group, r.n)).collect::<Vec<_>>(),
        &[
            ("yes", rows.iter().map(|r| frac(r.yes, r.n)).collect(), RGBColor(214, 39, 40)),
            ("maybe", rows.iter().map(|r| frac(r.maybe, r.n)).collect(), RGBColor(255, 127, 14)),
        ],
    )?;
    Ok(vec![events, nonevents])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(text: &str) -> Result<Vec<Label>, EvalError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels.csv");
        std::fs::write(&p, text).unwrap();
        read_labels(&p)
    }

    #[test]
    fn labels_are_read_and_bad_lines_named() {
        let l = labels("star,class,type,survey,followup,field,peak_hjd,files\nA,event,event,OGLE-II,0,BLG20,1400.5,1\nB,nonevent,dwarf_nova,OGLE-III/IV,0,BLG20,,1\n").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].peak_hjd, l[1].kind.as_str()), (Some(1400.5), "dwarf_nova"));
        let e = labels("star,class,peak_hjd\nA,event,soon\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("peak_hjd `soon`"), "{e}");
        let e = labels("star,class\nA,lens\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("class `lens`"), "{e}");
        let e = labels("star,class\nA,event\nA,nonevent\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("twice"), "{e}");
        assert!(labels("name,kind\n").unwrap_err().to_string().contains("no `star` and `class`"));
    }

    /// The halves of four stars, computed independently with Python's hashlib.
    const PINNED_HALVES: [Half; 4] = [Half::Validation, Half::Validation, Half::Training, Half::Training];

    #[test]
    fn the_halves_are_fixed_and_balanced() {
        let stars: Vec<String> = (0..2000).map(|i| format!("OGLE-BLG-DN-{i:04}")).collect();
        let v = stars.iter().filter(|s| half_of(s) == Half::Validation).count();
        assert!((900..1100).contains(&v), "{v} of 2000 in the validation half");
        // Pinned: the split must never move a star.
        assert_eq!(half_of("KB210006_BLG01"), half_of("KB210006_BLG01"));
        let pinned: Vec<Half> = ["KB210006_BLG01", "OGLEII_10.454300", "OGLE-BLG-DN-0004", "ASAS_216354_Mira"].iter().map(|s| half_of(s)).collect();
        assert_eq!(pinned, PINNED_HALVES.to_vec());
    }

    #[test]
    fn figures_count_the_peak_season_and_the_lead_time() {
        let l = labels("star,class,type,survey,peak_hjd\nE1,event,event,S,1100\nE2,event,event,S,1200\nE3,event,event,T,1300\nN1,nonevent,dwarf_nova,X,\nN2,nonevent,dwarf_nova,X,\nN3,nonevent,mira,X,\n").unwrap();
        let mut f = HashMap::new();
        // E1 found 4 days before its peak; E2 found after its peak; E3 found only in another season.
        f.insert("E1".to_string(), Outcome { first_yes: [(1, 1096.0)].into(), first_kept: [(1, 1090.0)].into() });
        f.insert("E2".to_string(), Outcome { first_yes: [(1, 1203.0)].into(), first_kept: [(1, 1203.0)].into() });
        f.insert("E3".to_string(), Outcome { first_yes: [(2, 1250.0)].into(), first_kept: [(2, 1250.0)].into() });
        f.insert("N1".to_string(), Outcome { first_yes: [(1, 1.0)].into(), first_kept: [(1, 1.0)].into() });
        f.insert("N3".to_string(), Outcome { first_yes: BTreeMap::new(), first_kept: [(1, 1.0)].into() });
        let e = evaluate(&l, &f, |_| 1, "abc", vec![]);
        let s = &e.events[0];
        assert_eq!((s.group.as_str(), s.n, s.found, s.before_peak), ("S", 2, 2, 1));
        assert_eq!(s.median_days_before_peak, Some(0.5));
        assert_eq!((e.events[1].found, e.events_total.found, e.events_total.before_peak), (0, 2, 1));
        assert_eq!((e.nonevents_total.n, e.nonevents_total.yes, e.nonevents_total.maybe), (3, 1, 1));
        let dn = e.nonevents.iter().find(|r| r.group == "dwarf_nova").unwrap();
        assert_eq!((dn.n, dn.yes, dn.maybe), (2, 1, 0));
        let md = to_markdown(&e);
        assert!(md.contains("| S | 2 | 2 (100.0 %) | 1 (50.0 %) | 0.5 |"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        let files = write_plots(&e, dir.path()).unwrap();
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 2000, "{} is a PNG figure", f.display());
        }
    }
}
