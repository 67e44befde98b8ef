//! docs/loyalty.md is checked against the code: its complete rule file parses, and every
//! worked example prices to the numbers its table shows.

use ledger_engine::loyalty::pricing::{CapsUsed, Line, PromotionPoints, price};
use ledger_engine::loyalty::rules_file::{parse, parse_timestamp};

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/loyalty.md");
    std::fs::read_to_string(path).expect("docs/loyalty.md")
}

/// The text of the first fenced block of `language` after the heading `heading`.
fn block_after(document: &str, heading: &str, language: &str) -> String {
    let section = &document[document.find(heading).expect("heading")..];
    let fence = format!("```{language}\n");
    let start = section.find(&fence).expect("block") + fence.len();
    let end = start + section[start..].find("```").expect("closing fence");
    section[start..end].to_string()
}

#[test]
fn the_example_rule_file_prices_every_worked_example_as_documented() {
    let document = document();
    let rules =
        parse(&block_after(&document, "## Rule files", "toml")).expect("the example parses").rules;
    assert_eq!(rules.categories.len(), 5);
    assert_eq!(rules.promotions.len(), 2);
    assert_eq!(rules.tiers.len(), 4);
    let section = &document[document.find("## Worked examples").expect("examples")..];
    let mut checked = 0;
    for row in section.lines().filter(|line| {
        line.starts_with("| ") && line[2..].starts_with(|c: char| c.is_ascii_digit())
    }) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 14, "{row}");
        let number =
            |cell: &str| cell.parse::<u64>().unwrap_or_else(|_| panic!("{cell:?} in {row}"));
        let at = parse_timestamp(cells[1]).expect("timestamp");
        let store = u32::try_from(number(cells[2])).unwrap();
        let tier = rules.tiers.iter().position(|tier| tier.name == cells[3]).expect("tier name");
        let (day, month) = cells[4].split_once('/').expect("used day/month");
        let used = CapsUsed { day: number(day), month: number(month) };
        let lines: Vec<Line> = cells[5]
            .split_whitespace()
            .map(|line| {
                let (category, amount) = line.split_once(':').expect("category:amount");
                let excluded = amount.ends_with('x');
                Line {
                    category: category.parse().unwrap(),
                    amount: amount.trim_end_matches('x').parse().unwrap(),
                    excluded,
                }
            })
            .collect();
        let breakdown = price(&rules, &lines, store, at, u8::try_from(tier).unwrap(), used)
            .unwrap_or_else(|error| panic!("{row}: {error}"));
        let promotions: Vec<PromotionPoints> = if cells[9] == "–" {
            Vec::new()
        } else {
            cells[9]
                .split(", ")
                .map(|entry| {
                    let (name, points) = entry.rsplit_once(' ').expect("name points");
                    let index =
                        rules.promotions.iter().position(|p| p.name == name).expect("promotion");
                    PromotionPoints {
                        promotion: u8::try_from(index).unwrap(),
                        points: number(points),
                    }
                })
                .collect()
        };
        let shown = [
            number(cells[6]),
            number(cells[7]),
            number(cells[8]),
            number(cells[10]),
            number(cells[11]),
            number(cells[12]),
            number(cells[13]),
        ];
        let priced = [
            breakdown.base,
            breakdown.category,
            breakdown.tier_points,
            breakdown.cap_cut,
            breakdown.earned,
            breakdown.bonus,
            breakdown.cashback,
        ];
        assert_eq!(priced, shown, "example {}: {breakdown:?}", cells[0]);
        assert_eq!(breakdown.promotions.as_slice(), promotions.as_slice(), "example {}", cells[0]);
        checked += 1;
    }
    assert_eq!(checked, 9, "every worked example was found");
}
