//! Topic-exchange matching: a trie of binding patterns, so that routing costs the length
//! of the routing key times the branching actually present, not the number of bindings.
//!
//! Words are separated by `.`; empty words count (`a..b` has three words, `a.` two) and the
//! empty key has none, exactly as RabbitMQ splits them. In a pattern `*` matches exactly
//! one word and `#` zero or more.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Splits a routing key or binding pattern into words the way RabbitMQ does.
pub(crate) fn split_words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        return Vec::new();
    }
    key.split('.').collect()
}

/// A trie of topic patterns whose leaves hold destinations of type `D` (with a count, since
/// several bindings may differ only in arguments and route the same).
#[derive(Debug)]
pub(crate) struct TopicTrie<D> {
    root: Node<D>,
}

#[derive(Debug)]
struct Node<D> {
    words: HashMap<Box<str>, Node<D>>,
    star: Option<Box<Node<D>>>,
    hash: Option<Box<Node<D>>>,
    destinations: HashMap<D, u32>,
}

impl<D> Default for Node<D> {
    fn default() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            destinations: HashMap::new(),
        }
    }
}

impl<D> Node<D> {
    fn is_empty(&self) -> bool {
        self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.destinations.is_empty()
    }
}

impl<D> Default for TopicTrie<D> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

impl<D: Clone + Eq + Hash> TopicTrie<D> {
    /// Adds one binding of `destination` with `pattern`.
    pub fn insert(&mut self, pattern: &str, destination: D) {
        let mut node = &mut self.root;
        for word in split_words(pattern) {
            node = match word {
                "*" => node.star.get_or_insert_with(Box::default),
                "#" => node.hash.get_or_insert_with(Box::default),
                _ => node.words.entry(word.into()).or_default(),
            };
        }
        *node.destinations.entry(destination).or_insert(0) += 1;
    }

    /// Removes one binding of `destination` with `pattern`; prunes emptied branches.
    pub fn remove(&mut self, pattern: &str, destination: &D) {
        let words = split_words(pattern);
        remove_at(&mut self.root, &words, destination);
    }

    /// Every destination with a pattern matching `key`, added to `out`.
    pub fn matches(&self, key: &str, out: &mut HashSet<D>) {
        let words = split_words(key);
        // `#` nodes can be reached at the same position along several paths
        // (`#.#`, `a.#` beside `#`): visiting each (node, position) once keeps matching
        // linear in trie size × key length instead of exponential.
        let mut seen_hash: HashSet<(*const Node<D>, usize)> = HashSet::new();
        match_at(&self.root, &words, 0, out, &mut seen_hash);
    }

    /// Whether no pattern is stored.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

fn remove_at<D: Eq + Hash>(node: &mut Node<D>, words: &[&str], destination: &D) -> bool {
    match words.split_first() {
        None => {
            if let Some(count) = node.destinations.get_mut(destination) {
                *count -= 1;
                if *count == 0 {
                    node.destinations.remove(destination);
                }
            }
        }
        Some((&word, rest)) => match word {
            "*" => {
                if let Some(child) = node.star.as_mut() {
                    if remove_at(child, rest, destination) {
                        node.star = None;
                    }
                }
            }
            "#" => {
                if let Some(child) = node.hash.as_mut() {
                    if remove_at(child, rest, destination) {
                        node.hash = None;
                    }
                }
            }
            _ => {
                if let Some(child) = node.words.get_mut(word) {
                    if remove_at(child, rest, destination) {
                        node.words.remove(word);
                    }
                }
            }
        },
    }
    node.is_empty()
}

fn match_at<D: Clone + Eq + Hash>(
    node: &Node<D>,
    words: &[&str],
    position: usize,
    out: &mut HashSet<D>,
    seen_hash: &mut HashSet<(*const Node<D>, usize)>,
) {
    if position == words.len() {
        out.extend(node.destinations.keys().cloned());
    } else {
        if let Some(child) = node.words.get(words[position]) {
            match_at(child, words, position + 1, out, seen_hash);
        }
        if let Some(child) = node.star.as_deref() {
            match_at(child, words, position + 1, out, seen_hash);
        }
    }
    if let Some(child) = node.hash.as_deref() {
        // `#` swallows zero or more words: continue from every later position.
        for next in position..=words.len() {
            if seen_hash.insert((child as *const Node<D>, next)) {
                match_at(child, words, next, out, seen_hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious recursive definition, to check the trie against.
    fn naive_match(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| naive_match(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && naive_match(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && naive_match(rest, &key[1..]),
        }
    }

    fn matching(trie: &TopicTrie<u32>, key: &str) -> Vec<u32> {
        let mut out = HashSet::new();
        trie.matches(key, &mut out);
        let mut v: Vec<u32> = out.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn words_split_like_rabbitmq() {
        assert_eq!(split_words(""), Vec::<&str>::new());
        assert_eq!(split_words("a"), vec!["a"]);
        assert_eq!(split_words("a."), vec!["a", ""]);
        assert_eq!(split_words("."), vec!["", ""]);
        assert_eq!(split_words("a..b"), vec!["a", "", "b"]);
    }

    #[test]
    fn star_and_hash() {
        let mut trie = TopicTrie::default();
        trie.insert("*.orange.*", 1);
        trie.insert("*.*.rabbit", 2);
        trie.insert("lazy.#", 3);
        trie.insert("#", 4);
        trie.insert("", 5);
        trie.insert("*", 6);
        assert_eq!(matching(&trie, "quick.orange.rabbit"), vec![1, 2, 4]);
        assert_eq!(matching(&trie, "lazy.orange.elephant"), vec![1, 3, 4]);
        assert_eq!(matching(&trie, "lazy"), vec![3, 4, 6]);
        assert_eq!(matching(&trie, ""), vec![4, 5]);
        assert_eq!(matching(&trie, "a."), vec![4]);
        assert_eq!(matching(&trie, "quick.orange.male.rabbit"), vec![4]);
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut trie = TopicTrie::default();
        trie.insert("a.#.b", 1);
        trie.insert("a.#.b", 1);
        trie.remove("a.#.b", &1);
        assert_eq!(matching(&trie, "a.x.b"), vec![1]);
        trie.remove("a.#.b", &1);
        assert!(matching(&trie, "a.x.b").is_empty());
        assert!(trie.is_empty());
        trie.remove("not.there", &1);
        assert!(trie.is_empty());
    }

    #[test]
    fn many_hashes_stay_fast() {
        let mut trie = TopicTrie::default();
        trie.insert("#.#.#.#.#.#.#.#.#.#.#.#.z", 1);
        let key = vec!["a"; 60].join(".");
        assert!(matching(&trie, &key).is_empty());
        assert_eq!(matching(&trie, &format!("{key}.z")), vec![1]);
    }

    #[test]
    fn many_bindings() {
        let mut trie = TopicTrie::default();
        for i in 0..100_000u32 {
            trie.insert(&format!("stock.{i}.*"), i);
        }
        assert_eq!(matching(&trie, "stock.4242.nyse"), vec![4242]);
        assert!(matching(&trie, "stock.4242").is_empty());
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new()),
            Just("*".to_string()),
            Just("#".to_string()),
        ]
    }

    fn key_word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new())
        ]
    }

    proptest! {
        #[test]
        fn trie_agrees_with_naive_matcher(
            patterns in prop::collection::vec(prop::collection::vec(word(), 0..5), 1..12),
            keys in prop::collection::vec(prop::collection::vec(key_word(), 0..6), 1..8),
        ) {
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            let mut trie = TopicTrie::default();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i as u32);
            }
            for key in &keys {
                let key = key.join(".");
                let expected: Vec<u32> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| naive_match(&split_words(p), &split_words(&key)))
                    .map(|(i, _)| i as u32)
                    .collect();
                prop_assert_eq!(matching(&trie, &key), expected, "key {:?}", key);
            }
            for (i, p) in patterns.iter().enumerate() {
                trie.remove(p, &(i as u32));
            }
            prop_assert!(trie.is_empty());
        }
    }
}
