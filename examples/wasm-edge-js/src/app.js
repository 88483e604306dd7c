// Geo-personalised content at the edge, in the Cloudflare Workers style.
//
// The country comes from nimbus's own geo lookup (`nimbus up --geoip DB` sets
// `x-nimbus-country` from the client's address; a client cannot send its own), then
// the first region in `accept-language` (`de-CH` → CH), then the DEFAULT_COUNTRY
// env var (or US).
// The answer is JSON, or HTML for `accept: text/html`, and says `vary` on every
// header it looked at so a cache in front keeps one copy per variant.

import { env } from './workers.js';

const LOCALES = {
  US: { language: 'en-US', greeting: 'Hello', currency: 'USD', symbol: '$' },
  GB: { language: 'en-GB', greeting: 'Hello', currency: 'GBP', symbol: '£' },
  IE: { language: 'en-IE', greeting: 'Hello', currency: 'EUR', symbol: '€' },
  CA: { language: 'en-CA', greeting: 'Hello', currency: 'CAD', symbol: '$' },
  AU: { language: 'en-AU', greeting: "G'day", currency: 'AUD', symbol: '$' },
  DE: { language: 'de-DE', greeting: 'Hallo', currency: 'EUR', symbol: '€' },
  AT: { language: 'de-AT', greeting: 'Grüß Gott', currency: 'EUR', symbol: '€' },
  CH: { language: 'de-CH', greeting: 'Grüezi', currency: 'CHF', symbol: 'CHF' },
  FR: { language: 'fr-FR', greeting: 'Bonjour', currency: 'EUR', symbol: '€' },
  BE: { language: 'fr-BE', greeting: 'Bonjour', currency: 'EUR', symbol: '€' },
  ES: { language: 'es-ES', greeting: 'Hola', currency: 'EUR', symbol: '€' },
  MX: { language: 'es-MX', greeting: 'Hola', currency: 'MXN', symbol: '$' },
  IT: { language: 'it-IT', greeting: 'Ciao', currency: 'EUR', symbol: '€' },
  NL: { language: 'nl-NL', greeting: 'Hallo', currency: 'EUR', symbol: '€' },
  SE: { language: 'sv-SE', greeting: 'Hej', currency: 'SEK', symbol: 'kr' },
  PL: { language: 'pl-PL', greeting: 'Dzień dobry', currency: 'PLN', symbol: 'zł' },
  PT: { language: 'pt-PT', greeting: 'Olá', currency: 'EUR', symbol: '€' },
  BR: { language: 'pt-BR', greeting: 'Olá', currency: 'BRL', symbol: 'R$' },
  JP: { language: 'ja-JP', greeting: 'こんにちは', currency: 'JPY', symbol: '¥' },
  IN: { language: 'hi-IN', greeting: 'नमस्ते', currency: 'INR', symbol: '₹' },
};

// A country we have no copy for still gets an answer, in English and dollars.
const FALLBACK = { language: 'en', greeting: 'Hello', currency: 'USD', symbol: '$' };

const VARY = 'x-nimbus-country, accept-language, accept';

// ISO 3166-1 alpha-2. Cloudflare sends XX for "unknown" and T1 for Tor exits.
function countryCode(value) {
  const code = (value ?? '').trim().toUpperCase();
  return /^[A-Z]{2}$/.test(code) && code !== 'XX' && code !== 'T1' ? code : null;
}

// The region of the most preferred language tag that has one:
// "fr, de-CH;q=0.9, en-US;q=0.5" → CH.
function regionFromAcceptLanguage(header) {
  if (!header) return null;
  const tags = header
    .split(',')
    .map((part, index) => {
      const [tag, ...params] = part.trim().split(';');
      const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
      const weight = q === undefined ? 1 : Number.parseFloat(q.slice(2));
      return { tag: tag.trim(), weight: Number.isNaN(weight) ? 0 : weight, index };
    })
    .filter(({ tag, weight }) => tag !== '' && tag !== '*' && weight > 0)
    .sort((a, b) => b.weight - a.weight || a.index - b.index);
  for (const { tag } of tags) {
    // language[-script][-REGION]…: the region is the first two-letter subtag after the language.
    const region = tag.split('-').slice(1).find((subtag) => /^[A-Za-z]{2}$/.test(subtag));
    if (region) return region.toUpperCase();
  }
  return null;
}

function resolveCountry(headers) {
  const fromGeo = countryCode(headers.get('x-nimbus-country'));
  if (fromGeo) return { country: fromGeo, source: 'geo' };
  const fromLanguage = countryCode(regionFromAcceptLanguage(headers.get('accept-language')));
  if (fromLanguage) return { country: fromLanguage, source: 'accept-language' };
  return { country: countryCode(env().DEFAULT_COUNTRY) ?? 'US', source: 'default' };
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function wantsHtml(accept) {
  return /(^|,)\s*text\/html\b/i.test(accept ?? '');
}

function personalise(request) {
  const url = new URL(request.url);
  const { country, source } = resolveCountry(request.headers);
  const locale = LOCALES[country] ?? FALLBACK;
  const body = {
    country,
    source,
    language: locale.language,
    greeting: `${locale.greeting}!`,
    currency: { code: locale.currency, symbol: locale.symbol },
    localized: country in LOCALES,
    path: url.pathname,
  };
  const headers = {
    vary: VARY,
    'content-language': locale.language,
    'cache-control': 'public, max-age=300',
  };
  if (wantsHtml(request.headers.get('accept'))) {
    const html = `<!doctype html>
<html lang="${escapeHtml(locale.language)}">
<head><meta charset="utf-8"><title>${escapeHtml(body.greeting)}</title></head>
<body>
<h1>${escapeHtml(body.greeting)}</h1>
<p>Prices in ${escapeHtml(locale.currency)} (${escapeHtml(locale.symbol)}) for ${escapeHtml(country)}.</p>
</body>
</html>
`;
    return new Response(html, { headers: { ...headers, 'content-type': 'text/html; charset=utf-8' } });
  }
  return new Response(`${JSON.stringify(body)}\n`, {
    headers: { ...headers, 'content-type': 'application/json' },
  });
}

addEventListener('fetch', (event) => {
  const { request } = event;
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    event.respondWith(
      new Response('{"error":"method not allowed"}\n', {
        status: 405,
        headers: { allow: 'GET, HEAD', 'content-type': 'application/json' },
      }),
    );
    return;
  }
  event.respondWith(personalise(request));
});
