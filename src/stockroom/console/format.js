// Numbers, money and times in the browser's own locale (Intl), each formatter made once.

const integer = new Intl.NumberFormat();
const money = new Intl.NumberFormat(undefined, {
  minimumFractionDigits: 2,
  maximumFractionDigits: 2,
});
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export const formatInteger = (value) => integer.format(value);

/** The API's money strings ("49.90") as the browser's locale writes them. */
export const formatMoney = (value) => money.format(Number(value));

export const formatTime = (value) => (value ? dateTime.format(new Date(value)) : "");

/** Signed, so that a change reads as one: +5, −3. */
export const formatDelta = (value) => (value > 0 ? "+" : "") + integer.format(value);
