"""Code people paste into a chat: snippets in many languages, buggy or verbose on purpose, SQL schemas,
regexes, shell scripts, config files, stack traces. Written for the corpus; the asks around them live in the
family modules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Snippet:
    lang: str   # the programming language as a user would name it
    tag: str    # what is in it: "buggy", "verbose", "plain"
    code: str


SNIPPETS: tuple[Snippet, ...] = (
    Snippet("Python", "buggy", '''def count_down(n):
    i = n
    while i > 0:
        print(i)
    print("liftoff")'''),
    Snippet("Python", "buggy", '''def average(values=[]):
    total = 0
    for i in range(1, len(values)):
        total += values[i]
    return total / len(values)'''),
    Snippet("Python", "verbose", '''def get_even_numbers(numbers):
    result = []
    for number in numbers:
        if number % 2 == 0:
            result.append(number)
        else:
            continue
    if len(result) == 0:
        return []
    else:
        return result'''),
    Snippet("Python", "verbose", '''def is_valid_user(user):
    if user is not None:
        if user.get("active") == True:
            if user.get("email") is not None and "@" in user.get("email"):
                return True
            else:
                return False
        else:
            return False
    else:
        return False'''),
    Snippet("Python", "plain", '''import pandas as pd

df = pd.read_csv("sales.csv")
monthly = df.groupby(df["date"].str[:7])["amount"].sum()
top = df.sort_values("amount", ascending=False).head(10)
print(monthly, top)'''),
    Snippet("Python", "buggy", '''from flask import Flask, request
app = Flask(__name__)
users = {}

@app.route("/users/<id>", methods=["GET"])
def get_user(id):
    return users[id]

@app.route("/users", methods=["POST"])
def add_user():
    data = request.json
    users[data["id"]] = data'''),
    Snippet("JavaScript", "buggy", '''async function loadAll(ids) {
  const results = [];
  ids.forEach(async (id) => {
    const res = await fetch(`/api/items/${id}`);
    results.push(await res.json());
  });
  return results;
}'''),
    Snippet("JavaScript", "buggy", '''for (var i = 0; i < buttons.length; i++) {
  buttons[i].addEventListener("click", function () {
    console.log("clicked button " + i);
  });
}'''),
    Snippet("JavaScript", "verbose", '''function getNames(users) {
  var names = [];
  for (var i = 0; i < users.length; i++) {
    if (users[i].active === true) {
      if (users[i].name !== undefined && users[i].name !== null) {
        names.push(users[i].name.trim());
      }
    }
  }
  return names;
}'''),
    Snippet("JavaScript", "buggy", '''function Counter() {
  const [count, setCount] = useState(0);
  useEffect(() => {
    const id = setInterval(() => setCount(count + 1), 1000);
  }, []);
  return <span>{count}</span>;
}'''),
    Snippet("TypeScript", "plain", '''interface Order { id: string; total: number; status: "open" | "paid" | "void" }

export function summarize(orders: Order[]) {
  return orders.reduce((acc, o) => {
    acc[o.status] = (acc[o.status] ?? 0) + o.total;
    return acc;
  }, {} as Record<string, number>);
}'''),
    Snippet("Go", "buggy", '''func sumAll(nums []int) int {
    var wg sync.WaitGroup
    total := 0
    for _, n := range nums {
        wg.Add(1)
        go func() {
            total += n
            wg.Done()
        }()
    }
    wg.Wait()
    return total
}'''),
    Snippet("Go", "buggy", '''func search(xs []int, target int) int {
    lo, hi := 0, len(xs)
    for lo < hi {
        mid := (lo + hi) / 2
        if xs[mid] < target {
            lo = mid
        } else {
            hi = mid
        }
    }
    return lo
}'''),
    Snippet("Rust", "buggy", '''fn longest(words: &Vec<String>) -> &String {
    let mut best = &words[0];
    for w in words {
        if w.len() > best.len() {
            best = w;
        }
    }
    best
}

fn main() {
    let v = vec![String::from("a"), String::from("abc")];
    let l = longest(&v);
    drop(v);
    println!("{}", l);
}'''),
    Snippet("Java", "buggy", '''public class Point {
    private final int x, y;
    public Point(int x, int y) { this.x = x; this.y = y; }
    @Override
    public boolean equals(Object o) {
        Point p = (Point) o;
        return p.x == x && p.y == y;
    }
}
// Set<Point> seen = new HashSet<>(); seen.add(new Point(1,2)); seen.contains(new Point(1,2)) == false ?!'''),
    Snippet("Java", "verbose", '''List<String> result = new ArrayList<>();
for (Customer c : customers) {
    if (c.getCountry() != null) {
        if (c.getCountry().equals("DE")) {
            if (c.getOrders().size() > 3) {
                result.add(c.getName().toUpperCase());
            }
        }
    }
}
Collections.sort(result);'''),
    Snippet("C#", "buggy", '''public async void SaveAsync(Order order)
{
    using var db = new ShopContext();
    db.Orders.Add(order);
    db.SaveChangesAsync();
    Console.WriteLine("saved");
}'''),
    Snippet("C++", "buggy", '''std::vector<int> v = {1, 2, 3, 4, 5, 6};
for (auto it = v.begin(); it != v.end(); ++it) {
    if (*it % 2 == 0) {
        v.erase(it);
    }
}'''),
    Snippet("C", "buggy", '''char *copy_name(const char *name) {
    char buf[32];
    strcpy(buf, name);
    return buf;
}'''),
    Snippet("Ruby", "verbose", '''def word_counts(text)
  counts = {}
  text.split(" ").each do |w|
    w = w.downcase
    if counts.has_key?(w)
      counts[w] = counts[w] + 1
    else
      counts[w] = 1
    end
  end
  counts
end'''),
    Snippet("PHP", "buggy", '''<?php
$id = $_GET['id'];
$result = mysqli_query($conn, "SELECT * FROM users WHERE id = " . $id);
while ($row = mysqli_fetch_assoc($result)) {
    echo $row['name'];
}'''),
    Snippet("Kotlin", "plain", '''data class User(val id: Long, val name: String, val email: String?)

fun emails(users: List<User>): List<String> =
    users.mapNotNull { it.email }.filter { it.contains("@") }.distinct()'''),
    Snippet("Swift", "buggy", '''func loadProfile(id: String) -> Profile {
    let data = try! Data(contentsOf: URL(string: "https://api.example.com/p/\\(id)")!)
    return try! JSONDecoder().decode(Profile.self, from: data)
}'''),
    Snippet("Python", "plain", '''class LRUCache:
    def __init__(self, capacity):
        self.capacity = capacity
        self.items = {}
        self.order = []

    def get(self, key):
        if key not in self.items:
            return -1
        self.order.remove(key)
        self.order.append(key)
        return self.items[key]

    def put(self, key, value):
        if key in self.items:
            self.order.remove(key)
        elif len(self.items) >= self.capacity:
            oldest = self.order.pop(0)
            del self.items[oldest]
        self.items[key] = value
        self.order.append(key)'''),
    Snippet("JavaScript", "plain", '''const express = require("express");
const app = express();
app.use(express.json());

app.post("/login", async (req, res) => {
  const user = await db.users.findOne({ email: req.body.email });
  if (user && user.password === req.body.password) {
    res.json({ token: jwt.sign({ id: user.id }, "secret") });
  } else {
    res.status(401).end();
  }
});'''),
    Snippet("Go", "plain", '''type Store struct {
    mu    sync.Mutex
    items map[string]Item
}

func (s *Store) Get(key string) (Item, bool) {
    s.mu.Lock()
    defer s.mu.Unlock()
    it, ok := s.items[key]
    return it, ok
}

func (s *Store) Put(key string, it Item) {
    s.mu.Lock()
    s.items[key] = it
    s.mu.Unlock()
}'''),
    Snippet("Python", "buggy", '''import threading
balance = 0

def deposit(n):
    global balance
    for _ in range(n):
        balance += 1

threads = [threading.Thread(target=deposit, args=(100000,)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(balance)  # sometimes less than 400000'''),
    Snippet("TypeScript", "buggy", '''function parseAge(input: string): number {
  const n = parseInt(input);
  if (n == NaN) {
    throw new Error("not a number");
  }
  return n;
}'''),
)


SQL_SCHEMAS: tuple[str, ...] = (
    '''CREATE TABLE customers (id INT PRIMARY KEY, name TEXT, country TEXT, created_at DATE);
CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT REFERENCES customers(id), total NUMERIC(10,2),
                     status TEXT, ordered_at TIMESTAMP);''',
    '''employees(id, name, department_id, salary, hired_on)
departments(id, name, manager_id)''',
    '''CREATE TABLE events (
  user_id BIGINT,
  event_type VARCHAR(32),   -- 'signup', 'login', 'purchase'
  amount DECIMAL(12,2),
  created_at TIMESTAMP
);''',
    '''products(sku, name, category, price)
order_items(order_id, sku, quantity, unit_price)
orders(order_id, customer_id, order_date)''',
    '''CREATE TABLE tickets (id serial, opened_at timestamptz, closed_at timestamptz, priority int, agent text);''',
)

SLOW_QUERIES: tuple[str, ...] = (
    '''SELECT c.name, (SELECT SUM(o.total) FROM orders o WHERE o.customer_id = c.id) AS revenue
FROM customers c
WHERE (SELECT COUNT(*) FROM orders o WHERE o.customer_id = c.id) > 5
ORDER BY revenue DESC;''',
    '''SELECT * FROM events WHERE DATE(created_at) = '2024-03-01' AND lower(event_type) = 'purchase';''',
    '''SELECT DISTINCT p.category FROM products p, order_items oi, orders o
WHERE p.sku = oi.sku AND oi.order_id = o.order_id AND o.order_date > now() - interval '30 days';''',
)

REGEXES: tuple[str, ...] = (
    r"^(?=.*[A-Z])(?=.*\d)(?=.*[^\w\s]).{8,}$",
    r"^[\w.+-]+@[\w-]+\.[\w.-]+$",
    r"\b(\d{1,3})(?:\.(\d{1,3})){3}\b",
    r"^(\+\d{1,3}[- ]?)?\(?\d{3}\)?[- ]?\d{3}[- ]?\d{4}$",
    r"(?<=\$)\d+(?:\.\d{2})?",
    r"^\s*#.*$|^\s*$",
    r"(\w+)\s+\1",
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$",
)

SHELL: tuple[str, ...] = (
    '''#!/bin/bash
for f in $(ls *.log); do
  gzip $f
  mv $f.gz /backup/
done''',
    '''find . -name "*.tmp" -mtime +7 | xargs rm''',
    '''#!/bin/sh
DATE=`date +%F`
tar czf /backups/site-$DATE.tgz /var/www
scp /backups/site-$DATE.tgz backup@10.0.0.5:/srv/
''',
    '''ps aux | grep python | awk '{print $2}' | xargs kill -9''',
)

CONFIGS: tuple[tuple[str, str], ...] = (
    ("nginx", '''server {
    listen 80;
    server_name example.com;
    location /api {
        proxy_pass http://localhost:3000;
    }
    location / {
        root /var/www/html;
    }
}'''),
    ("docker-compose", '''version: "3"
services:
  web:
    build: .
    ports: ["8000:8000"]
    depends_on: [db]
  db:
    image: postgres:16
    environment:
      POSTGRES_PASSWORD: example'''),
    ("Kubernetes", '''apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  replicas: 2
  template:
    spec:
      containers:
      - name: api
        image: registry.local/api:1.4
        ports:
        - containerPort: 8080'''),
    ("GitHub Actions", '''on: push
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: pip install -r requirements.txt
      - run: pytest'''),
)

TRACES: tuple[tuple[str, str], ...] = (
    ("Python", '''Traceback (most recent call last):
  File "app/main.py", line 42, in <module>
    report = build_report(rows)
  File "app/report.py", line 17, in build_report
    total += row["amount"]
TypeError: unsupported operand type(s) for +=: 'int' and 'str\''''),
    ("Java", '''Exception in thread "main" java.lang.NullPointerException: Cannot invoke "String.length()" because "name" is null
    at com.shop.UserService.normalize(UserService.java:58)
    at com.shop.UserService.register(UserService.java:31)
    at com.shop.Main.main(Main.java:12)'''),
    ("JavaScript", '''TypeError: Cannot read properties of undefined (reading 'map')
    at ProductList (ProductList.jsx:14:23)
    at renderWithHooks (react-dom.development.js:14985:18)'''),
    ("Go", '''panic: assignment to entry in nil map

goroutine 1 [running]:
main.(*Cache).Set(...)
        /app/cache.go:21
main.main()
        /app/main.go:9 +0x3c
exit status 2'''),
    ("Rust", '''error[E0502]: cannot borrow `v` as mutable because it is also borrowed as immutable
 --> src/main.rs:4:5
  |
3 |     let first = &v[0];
  |                  - immutable borrow occurs here
4 |     v.push(6);
  |     ^^^^^^^^^ mutable borrow occurs here
5 |     println!("{}", first);
  |                    ----- immutable borrow later used here'''),
)


def fence(code: str, lang: str = "") -> str:
    """A fenced block as chat clients paste it; the language hint is what a user would type, if anything."""
    hint = {"C#": "csharp", "C++": "cpp", "JavaScript": "js", "TypeScript": "ts"}.get(lang, lang.lower())
    return f"```{hint}\n{code}\n```"
