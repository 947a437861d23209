"""Hand-written posts for these tests; none is taken from a classifiers/data file."""
from __future__ import annotations

# Posts a keyword list gets wrong: each must come out as "none".
HARD_NEGATIVES: list[str] = [
    "Absolutely killed it at the Larchwood spring concert tonight, so proud of our Year 7s!",
    "The Fenwick High bake sale was the bomb, raised £420 for the hospice 🎉",
    "We'll destroy them on Saturday, come down and support the Ashcombe U14s!",
    "All Larchwood Academy staff completed their annual safeguarding and Prevent training today.",
    "Anti-Bullying Week starts Monday at Fenwick High: odd socks day and a kindness assembly.",
    "Our DSL is running an online safety evening for Ashcombe parents on Thursday at 6pm.",
    "Year 8 at Larchwood are reading Lord of the Flies, the murder scene had them gripped",
    "Film club at Fenwick watched Gladiator, the fight scenes were epic, 9/10 from Year 11",
    "Year 10 history trip to the war museum today, learning how extremism took hold in the 1930s.",
    "Roadworks on Larchwood High Street again, leave early for the school run",
    "this maths homework from ashcombe is actual murder ngl",
    "Shooting practice for the Larchwood netball team has moved to Wednesday lunchtime.",
    "Mental Health Awareness Week at Fenwick High: wellbeing walks every lunchtime.",
    "Great PSHE lesson on consent and healthy relationships for Year 10 at Ashcombe today.",
]

# Posts that must be flagged: (text, acceptable categories).
MUST_FLAG: list[tuple[str, set[str]]] = [
    ("my mate in year 10 at larchwood says shes going to take all her mums pills tonight "
     "what do i do", {"safeguarding"}),
    ("someone is bringing a knife to Larchwood Academy tomorrow to sort out the lads in 11C",
     {"safeguarding"}),
    ("if ur in year 8 at fenwick dm me, i can get u free vapes and a lift home, "
     "dont tell ur parents x", {"safeguarding"}),
    ("nudes of a year 9 girl from ashcombe are going round on snapchat, everyone's sharing them",
     {"safeguarding"}),
    ("my stepdad hits me when mum's at work and i'm scared to go home after school",
     {"safeguarding"}),
    ("i cant do this anymore. nobody at fenwick would even notice if i was gone",
     {"safeguarding"}),
    ("The headteacher at Fenwick High is a useless, lying cow who should be sacked",
     {"disparaging"}),
    ("Ofsted have rated Larchwood Academy inadequate after inspectors found serious failings "
     "in leadership and safeguarding records", {"reputational"}),
    ("Six weeks and Fenwick High still haven't replied to my complaint about my son's SEN "
     "support. Appalling communication.", {"reputational"}),
]
