//! The demo's synthetic seq2seq task: translate a short English word sequence into German, word
//! by word, and write it in reverse order. Every target token depends on a source token at a
//! position the model must work out from the lengths, so it needs real (if small) attention.

use crate::rng::Rng;

const LEXICON: &[(&str, &str)] = &[
    ("red", "rot"),
    ("blue", "blau"),
    ("green", "grün"),
    ("small", "klein"),
    ("big", "groß"),
    ("old", "alt"),
    ("new", "neu"),
    ("cat", "katze"),
    ("dog", "hund"),
    ("house", "haus"),
    ("tree", "baum"),
    ("bird", "vogel"),
    ("fish", "fisch"),
    ("book", "buch"),
    ("water", "wasser"),
    ("bread", "brot"),
    ("sees", "sieht"),
    ("eats", "isst"),
    ("finds", "findet"),
    ("likes", "mag"),
    ("has", "hat"),
    ("and", "und"),
    ("with", "mit"),
    ("today", "heute"),
    ("here", "hier"),
    ("very", "sehr"),
    ("one", "eins"),
    ("two", "zwei"),
    ("three", "drei"),
    ("four", "vier"),
];

/// Which task the examples pose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// The English words' German translations, in reverse order.
    Translate,
    /// The same English words in alphabetical order (a global reordering: every target position
    /// depends on all the source words).
    Sort,
}

impl Task {
    pub fn describe(self) -> &'static str {
        match self {
            Task::Translate => "translate English word sequences into German, in reverse order",
            Task::Sort => "write English word sequences in alphabetical order",
        }
    }
}

/// One example of `task` with `min_words..=max_words` source words.
pub fn example(task: Task, rng: &mut Rng, min_words: usize, max_words: usize) -> (String, String) {
    let n = rng.int_in(min_words as u64, max_words as u64) as usize;
    let picks: Vec<usize> = (0..n).map(|_| rng.int_in(0, LEXICON.len() as u64 - 1) as usize).collect();
    let src = picks.iter().map(|&i| LEXICON[i].0).collect::<Vec<_>>().join(" ");
    let tgt = match task {
        Task::Translate => picks.iter().rev().map(|&i| LEXICON[i].1).collect::<Vec<_>>(),
        Task::Sort => {
            let mut w: Vec<&str> = picks.iter().map(|&i| LEXICON[i].0).collect();
            w.sort_unstable();
            w
        }
    };
    (src, tgt.join(" "))
}

/// `n` distinct examples (by source); the train and held-out sets of the demo never share a source.
pub fn dataset(
    task: Task,
    seed: u64,
    n: usize,
    words: std::ops::RangeInclusive<usize>,
    exclude: &std::collections::HashSet<String>,
) -> Vec<(String, String)> {
    let mut rng = Rng::new(seed, 0xDE40);
    let mut seen = exclude.clone();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (s, t) = example(task, &mut rng, *words.start(), *words.end());
        if seen.insert(s.clone()) {
            out.push((s, t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_reversed_translations_and_sets_are_disjoint() {
        let train = dataset(Task::Translate, 1, 300, 3..=7, &Default::default());
        let seen: std::collections::HashSet<String> = train.iter().map(|e| e.0.clone()).collect();
        let valid = dataset(Task::Translate, 2, 50, 3..=7, &seen);
        assert!(valid.iter().all(|(s, _)| !seen.contains(s)));
        let (s, t) = &train[0];
        let back: Vec<&str> = t.split(' ').rev().map(|g| LEXICON.iter().find(|(_, de)| *de == g).unwrap().0).collect();
        assert_eq!(back.join(" "), *s);
    }

    #[test]
    fn sorted_targets_are_the_source_words_in_order() {
        for (s, t) in dataset(Task::Sort, 3, 100, 4..=8, &Default::default()) {
            let mut w: Vec<&str> = s.split(' ').collect();
            w.sort_unstable();
            assert_eq!(t, w.join(" "));
            assert!((4..=8).contains(&w.len()));
        }
    }
}
