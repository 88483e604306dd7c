// A fake language model: answers with canned text, one token at a time, slowly, the way a
// real model's API streams. Swap it for a real client (an async iterator of tokens) in production.
const ANSWERS = [
  "Streaming means the first words reach you while the rest are still being written.",
  "nimbus passes each chunk to the client as the function writes it: no buffering in between.",
];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function* complete(prompt, delayMs) {
  const text = ANSWERS[prompt.length % ANSWERS.length];
  for (const token of text.match(/\S+\s*/g)) {
    await sleep(delayMs);
    yield token;
  }
}

module.exports = { complete };
