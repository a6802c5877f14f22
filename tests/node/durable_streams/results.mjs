// Reading vitest's JSON report of the conformance suite: each test's id (its describe titles and
// its own, joined by " > "), its status, and the per-group counts (a group is the suite's
// top-level describe). tests/web/test_durable_streams_conformance.py reads the same report the
// same way, in Python.

/** "passed" | "failed" | "skipped" for one assertion result of vitest's JSON reporter. */
export function outcome(status) {
  if (status === "passed" || status === "failed") return status
  return "skipped" // pending, skipped, todo
}

/** [{ id, group, status }] for every test of a vitest JSON report. */
export function testsOf(report) {
  const tests = []
  for (const file of report.testResults) {
    for (const a of file.assertionResults) {
      tests.push({
        id: [...a.ancestorTitles, a.title].join(" > "),
        group: a.ancestorTitles[0] ?? "(top level)",
        status: outcome(a.status),
      })
    }
  }
  return tests
}

/** Map group -> { passed, failed, skipped }, groups in the suite's order. */
export function countsByGroup(tests) {
  const groups = new Map()
  for (const t of tests) {
    if (!groups.has(t.group)) groups.set(t.group, { passed: 0, failed: 0, skipped: 0 })
    groups.get(t.group)[t.status] += 1
  }
  return groups
}

export function totals(tests) {
  const sum = { passed: 0, failed: 0, skipped: 0 }
  for (const t of tests) sum[t.status] += 1
  return sum
}
