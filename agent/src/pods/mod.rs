//! Pod lifecycle: a pure planner (desired vs observed -> actions) and the
//! workers that carry the actions out.
